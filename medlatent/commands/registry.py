"""The model families by name, and configs resolved and validated against them.

Resolving a config is where every key is checked, once: the YAML and ``--set`` overrides are
merged onto the defaults of the common sections (``data``, ``train``) and the family's own
(``net``, ``loss``), unknown keys are rejected, every section is validated against its typed
schema, then the family's cross-section check runs. Nothing downstream re-checks a value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from medlatent.attrivae.family import FAMILY as ATTRIVAE
from medlatent.config import (TrainSection, merge_into, parse_overrides, read_yaml_file, section_defaults,
                              validate_sections)
from medlatent.errors import InputError
from medlatent.family import Family
from medlatent.transforms.settings import DataSection, absolutize_paths
from medlatent.vqvae3d.family import FAMILY as VQVAE3D

__all__ = ["FAMILIES", "family_of", "defaults_for", "resolve", "load_config"]

#: every model family, by the config's ``model`` value
FAMILIES: dict[str, Family] = {family.name: family for family in (VQVAE3D, ATTRIVAE)}


def family_of(model: Any) -> Family:
    """The family named ``model``; InputError listing the known ones."""
    if model not in FAMILIES:
        raise InputError(f"config key 'model': unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model]


def _sections(family: Family) -> dict[str, Any]:
    return {"data": DataSection, "train": TrainSection, **family.sections}


def defaults_for(model: str) -> dict[str, Any]:
    """The full default config of a model family."""
    family = family_of(model)
    cfg: dict[str, Any] = {"model": model, **section_defaults(_sections(family))}
    merge_into(cfg, copy.deepcopy(dict(family.overrides)), strict=True, source=f"{model} defaults")
    return cfg


def resolve(raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config") -> dict[str, Any]:
    """Defaults of the family named in ``raw['model']``, updated by ``raw`` then ``overrides``, validated.

    Raises:
        InputError: an unknown model or key, a section that is not a mapping, or a value of the
            wrong type or range; the message names ``source`` (or ``--set``) and the dotted key.
    """
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping at the top level")
    model = (overrides or {}).get("model", raw.get("model"))
    family = family_of(model)
    cfg = defaults_for(model)
    merge_into(cfg, raw, strict=True, source=source)
    if overrides:
        merge_into(cfg, overrides, strict=True, source="--set")
    cfg = validate_sections(cfg, _sections(family), source="--set or " + source if overrides else source)
    family.check(cfg)
    absolutize_paths(cfg["data"])
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``--set`` overrides, and return the validated config."""
    return resolve(read_yaml_file(path), parse_overrides(overrides), source=str(path))
