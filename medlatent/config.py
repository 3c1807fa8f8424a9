"""Run configuration: YAML on top of defaults, ``--set key=value`` overrides, every key typed and checked once.

A config is a nested mapping of sections. Each layer declares the section it reads as a
pydantic model: ``train`` here (the engine's), ``data`` in :mod:`medlatent.transforms.settings`,
``net`` and ``loss`` in each model family. :func:`resolve` merges a YAML mapping and
``--set`` overrides onto the sections' defaults, rejects unknown keys with the known ones
listed, then validates every section, so a wrong type or range is an ``InputError`` naming
the dotted key before anything is written. The validated config is handed on as a plain
dict (``cfg["train"]["lr"]``), the same shape as ``RUN/config.yaml``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medlatent.errors import InputError

__all__ = ["Section", "TrainSection", "SCHEDULES", "read_yaml", "read_yaml_file", "parse_overrides", "merge_into",
           "section_defaults", "validate_sections", "dump_config", "FREE_FORM"]

SCHEDULES = ("none", "cosine", "step")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are coerced only where YAML is ambiguous."""

    model_config = ConfigDict(extra="forbid")


class TrainSection(Section):
    """``train``: what the engine (:func:`medlatent.engine.fit`) reads."""

    epochs: int = Field(20, ge=1, description="epochs to train (a budget may stop earlier)")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1.0e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal[SCHEDULES] = "none"  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool = Field(True, description="false keeps train.precision auto at fp32 (the switch before train.precision)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: bf16 on CUDA and on CPUs with native bf16, fp16 on older CUDA, "
                            "else fp32 (medlatent/precision.py)")
    channels_last: Any = Field(
        "auto", description="auto, true or false: models and batches in channels_last_3d; auto: on CUDA in bf16/fp16 only")
    compile: bool = Field(False, description="torch.compile the training model")

    @field_validator("channels_last", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> str | bool:
        if isinstance(value, bool) or value == "auto":
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("must be auto, true or false")
    best_metric: str = "val_loss"
    best_mode: Literal["min", "max"] = "min"
    max_minutes: float | None = Field(None, gt=0, description="training-time budget over all of a run's invocations")
    preview: bool = True


# sections whose dict-valued keys are replaced whole rather than merged key by key
FREE_FORM = {"data.tables"}


def section_defaults(sections: Mapping[str, type[Section]]) -> dict[str, Any]:
    """``{name: defaults of that section}`` as plain data."""
    return {name: model().model_dump(mode="json") for name, model in sections.items()}


def merge_into(base: dict, update: Mapping, prefix: str = "", strict: bool = True, source: str = "config") -> None:
    """Merge ``update`` into ``base`` in place, section by section.

    With ``strict``, a key that ``base`` does not have is an InputError naming the dotted key,
    ``source`` (the file or ``--set``) and the keys known at that level. A section given as
    something other than a mapping (``--set data=5``) is an InputError too. Keys in
    :data:`FREE_FORM` are replaced whole.
    """
    if not isinstance(update, Mapping):
        where = prefix.rstrip(".") or "the top level"
        raise InputError(f"{source}: '{where}' must be a mapping of keys, got {update!r}")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if strict and key not in base:
            known = ", ".join(sorted(f"{prefix}{k}" for k in base))
            raise InputError(f"{source}: unknown key '{dotted}' (known here: {known})")
        if isinstance(base.get(key), dict) and dotted not in FREE_FORM:
            if not isinstance(value, Mapping):
                raise InputError(f"{source}: '{dotted}' is a section and must be a mapping of keys, got {value!r}")
            merge_into(base[key], value, prefix=f"{dotted}.", strict=strict, source=source)
        else:
            base[key] = value


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    return f"'{key}': {error['msg']} (got {error.get('input')!r})"


def validate_sections(cfg: Mapping[str, Any], sections: Mapping[str, type[Section]],
                      source: str = "config") -> dict[str, Any]:
    """Validate each named section of ``cfg``; returns ``cfg`` with every section coerced to its type.

    Raises:
        InputError: naming ``source`` and every offending dotted key with what was wrong.
    """
    out = dict(cfg)
    problems: list[str] = []
    for name, model in sections.items():
        try:
            out[name] = model.model_validate(cfg.get(name, {})).model_dump(mode="json")
        except ValidationError as err:
            problems.extend(_describe({**e, "loc": (name, *e["loc"])}) for e in err.errors())
    if problems:
        raise InputError(f"{source}: bad config value(s): " + "; ".join(problems))
    return out


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


def read_yaml_file(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        raw = read_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections at the top level")
    return raw


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
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {key}: '{part}' was already set to a value, not a section")
            node = child
        node[parts[-1]] = value
    return nested


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(copy.deepcopy(dict(cfg)), sort_keys=False)
