"""Run configuration: YAML on top of defaults, ``--set key=value`` overrides, unknown keys rejected.

A config is a plain nested dict. The common sections (``data``, ``train``) are defined
here; each model family adds its own ``net`` and ``loss`` sections through the module
named in ``FAMILIES`` (imported lazily so that the families never import each other).
"""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from typing import Any

import yaml

from medlatent.errors import InputError

# model name -> module that holds DEFAULTS (its ``net``/``loss`` sections and any
# overrides of the common ones) and build functions.
FAMILIES: dict[str, str] = {"vqvae3d": "medlatent.vqvae3d.family", "attrivae": "medlatent.attrivae.family"}

COMMON_DEFAULTS: dict[str, Any] = {
    "model": None,
    "data": {
        # one of: a manifest CSV, a MedMNIST .npz, or an images glob (+ masks glob, tables)
        "manifest": None,
        "images": None,
        "masks": None,
        # multiply each image by its mask (> 0) before anything else: skull-stripping with a brain mask
        "mask_image": False,
        "tables": [],
        "spatial_size": [64, 64, 48],
        "spatial_fit": "resize",  # resize | pad_crop
        "spacing": None,
        "intensity": "percentile",
        "foreground_crop": False,
        "cache": "memory",
        "cache_dir": None,
        "split": {"val": 0.1, "test": 0.1, "seed": 0},
        "augment": [],
        "attributes": [],
        "label": None,
        "drop_missing": False,
    },
    "train": {
        "epochs": 20,
        "batch_size": 4,
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "optimizer": "adam",
        "schedule": "none",
        "seed": 0,
        "num_workers": 0,
        "grad_clip": None,
        "amp": True,
        "best_metric": "val_loss",
        "best_mode": "min",
        "max_minutes": None,
        "preview": True,
    },
}

# keys whose values are free-form (lists of dicts, dicts of user-chosen names)
_FREE_FORM = {"data.tables"}


def family_module(model: str | None):
    """The module of a model family, or an InputError listing the known ones."""
    if model not in FAMILIES:
        raise InputError(f"config key 'model': unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[model])


def defaults_for(model: str) -> dict[str, Any]:
    """The full default config of a model family."""
    merged = copy.deepcopy(COMMON_DEFAULTS)
    merge_into(merged, copy.deepcopy(family_module(model).DEFAULTS), prefix="", strict=False)
    merged["model"] = model
    return merged


def merge_into(base: dict, update: dict, prefix: str = "", strict: bool = True, source: str = "config") -> None:
    """Merge ``update`` into ``base`` in place, section by section.

    With ``strict``, a key that ``base`` does not have is an InputError naming the dotted key,
    ``source`` (the file or ``--set``) and the keys known at that level. Sections listed as free
    form are replaced whole rather than merged.
    """
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if strict and key not in base:
            known = ", ".join(sorted(f"{prefix}{k}" for k in base))
            raise InputError(f"{source}: unknown key '{dotted}' (known here: {known})")
        if isinstance(base.get(key), dict) and isinstance(value, dict) and dotted not in _FREE_FORM:
            merge_into(base[key], value, prefix=f"{dotted}.", strict=strict, source=source)
        else:
            base[key] = value


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float: YAML 1.1 wants a dot, users do not write one."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text with numbers like ``1e-4`` read as floats."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-4", "data.augment=[flip]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            value = read_yaml(raw)
        except yaml.YAMLError as err:
            raise InputError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def resolve(raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config") -> dict[str, Any]:
    """Defaults of the family named in ``raw['model']``, updated by ``raw`` then ``overrides``."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping at the top level")
    model = (overrides or {}).get("model", raw.get("model"))
    cfg = defaults_for(model)
    merge_into(cfg, raw, prefix="", strict=True, source=source)
    if overrides:
        merge_into(cfg, overrides, prefix="", strict=True, source="--set")
    _absolutize_paths(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``--set`` overrides, and return the resolved dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    return resolve(raw, parse_overrides(overrides), source=str(path))


def _absolutize_paths(cfg: dict[str, Any]) -> None:
    """Relative data paths are taken from the working directory and stored absolute,
    so that RUN/config.yaml rebuilds the run from anywhere."""
    data = cfg["data"]
    for key in ("manifest", "images", "masks", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().absolute())
    for table in data.get("tables") or []:
        if isinstance(table, dict) and table.get("path"):
            table["path"] = str(Path(table["path"]).expanduser().absolute())


def dump_config(cfg: dict[str, Any]) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(cfg, sort_keys=False)
