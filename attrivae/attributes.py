"""The attribute map of a run: min-max scaler fitted on the training split and the attribute -> latent-dim ties."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlatent.errors import InputError
from medlatent.runs import read_json, write_json

__all__ = ["AttributeMap", "fit_attribute_map", "check_attributes_present", "ATTRIBUTES_FILE"]

ATTRIBUTES_FILE = "attributes.json"


@dataclass
class AttributeMap:
    """What a run knows about its attributes (saved as ``RUN/attributes.json``).

    Attributes:
        names: every attribute the data layer delivers, in ``record["attrs"]`` order.
        regularized: the names tied to latent dims, in latent-dim order (``dims[i]`` for ``regularized[i]``).
        dims: latent dimension of each regularised attribute.
        minimum, maximum: per ``names`` entry, from the training split (min-max scaling to [0, 1]).
        latent_dim: size of ``z``.
        label: the label column, or None.
        classes: class names (index = class id), or None.
    """

    names: list[str]
    regularized: list[str]
    dims: list[int]
    minimum: list[float]
    maximum: list[float]
    latent_dim: int
    label: str | None = None
    classes: list[str] | None = None
    gamma: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[int]:
        """Index into ``names`` (and ``record["attrs"]``) of each regularised attribute."""
        return [self.names.index(n) for n in self.regularized]

    def scale(self, attrs: torch.Tensor) -> torch.Tensor:
        """Min-max scale raw attributes ``[B, len(names)]`` with the training-split range (a constant maps to 0)."""
        lo = torch.as_tensor(self.minimum, dtype=attrs.dtype, device=attrs.device)
        span = torch.as_tensor(self.maximum, dtype=attrs.dtype, device=attrs.device) - lo
        return (attrs - lo) / torch.where(span > 0, span, torch.ones_like(span))

    def dim_of(self, name: str) -> int:
        """The latent dim of a regularised attribute; InputError naming what is available otherwise."""
        if name in self.regularized:
            return self.dims[self.regularized.index(name)]
        available = ", ".join(self.regularized) or "none"
        if name in self.names:
            raise InputError(f"attribute '{name}' is not regularized in this run (it has no latent dimension); "
                             f"regularized attributes: {available}")
        raise InputError(f"unknown attribute '{name}'; regularized attributes in this run: {available}")

    def save(self, run: str | Path) -> None:
        write_json(Path(run) / ATTRIBUTES_FILE, asdict(self))

    @classmethod
    def load(cls, run: str | Path) -> "AttributeMap":
        payload = read_json(Path(run) / ATTRIBUTES_FILE)
        return cls(**payload)


def check_attributes_present(records: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str],
                             columns: Sequence[int]) -> None:
    """InputError naming the subjects whose regularised attributes are missing (NaN) or absent.

    The data layer drops such rows when ``data.drop_missing`` is set; this guards the model
    against a record list that slipped through.
    """
    bad: list[str] = []
    for split, rows in records.items():
        for record in rows:
            attrs = record.get("attrs")
            values = np.asarray(attrs, dtype=np.float64) if attrs is not None else None
            if values is None or values.shape[-1] < len(names) or not np.all(np.isfinite(values[list(columns)])):
                bad.append(f"{record.get('subject', '?')} ({split})")
    if bad:
        shown = ", ".join(bad[:10]) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
        raise InputError(f"regularized attributes {[names[c] for c in columns]} are missing for subjects {shown}; "
                         "fill them in or set data.drop_missing: true")


def fit_attribute_map(records: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str],
                      regularized: Sequence[str] | None, latent_dim: int, label: str | None = None,
                      classes: Sequence[str] | None = None, gamma: float = 0.0) -> AttributeMap:
    """Fit the min-max scaler on ``records["train"]`` and tie attribute ``i`` of ``regularized`` to dim ``i``.

    Args:
        records: split -> records with ``"attrs"`` ``[len(names)]`` raw values.
        names: attribute names in record order (``DataInfo.attributes``).
        regularized: the subset to regularise (None = all of ``names``), in latent-dim order.
        latent_dim: size of ``z``; must exceed the number of regularised attributes.

    Raises:
        InputError: no training records, or missing values (subjects named).
    """
    names = list(names)
    # the config check (attrivae.family.check) has made sure they are among names and fit latent_dim
    regularized = list(names if regularized is None else regularized)
    train = list(records.get("train", []))
    if not train:
        raise InputError("the training split is empty; cannot fit the attribute scaler")
    columns = [names.index(n) for n in regularized]
    check_attributes_present({"train": train}, names, columns)
    if names:
        values = np.stack([np.asarray(r["attrs"], dtype=np.float64) for r in train])  # [N, A]
        minimum, maximum = np.nanmin(values, axis=0).tolist(), np.nanmax(values, axis=0).tolist()
    else:
        minimum, maximum = [], []
    return AttributeMap(names=names, regularized=regularized, dims=list(range(len(regularized))),
                        minimum=[float(v) for v in minimum], maximum=[float(v) for v in maximum],
                        latent_dim=int(latent_dim), label=label, classes=list(classes) if classes else None,
                        gamma=float(gamma))
