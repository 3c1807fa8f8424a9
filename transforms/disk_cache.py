"""The disk cache of preprocessed items: tensors, numbers and strings only, loaded with ``weights_only=True``.

MONAI's ``PersistentDataset`` pickles whole items (MetaTensors, NumPy arrays, MONAI enums), so
reading them back needs ``torch.load(weights_only=False)``, which runs whatever code a cache file
names: a run folder someone sends you could then execute code on ``evaluate`` or ``--resume``.
:class:`TensorDiskCache` keeps MONAI's cache logic (one file per item, named by the item's hash)
but writes each item as plain containers of tensors and builtins (:func:`encode`) and reads it
with ``torch.load(weights_only=True)``, whose unpickler refuses every class it does not know.
A file that does not load that way (an older pickled cache, a truncated write, a planted object)
is deleted and rebuilt from the source files, never executed.

The MetaTensor's metadata and ``applied_operations`` survive the round trip (NumPy arrays as
tensors or lists, MONAI enums as their string values, which compare and hash equal), so a cached
item can still be mapped back onto its input file's grid.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PersistentDataset

from medlatent.io import atomic_path

__all__ = ["TensorDiskCache", "encode", "decode"]

log = logging.getLogger(__name__)

_TAG = "__medlatent_cache__"
# bump when the layout written by encode() changes
FORMAT = 1


def encode(value: Any) -> Any:
    """``value`` as nested dicts/lists/tuples of tensors, str, int, float, bool and None.

    MetaTensor -> ``{tag: "meta_tensor", "data", "meta", "ops"}``; ndarray -> ``{tag: "ndarray", ...}``;
    NumPy scalars -> Python numbers; enums -> their values; paths -> str.

    Raises:
        TypeError: a value of any other type (the cache would not be able to read it back safely).
    """
    if isinstance(value, MetaTensor):
        return {_TAG: "meta_tensor", "data": value.as_tensor().detach().cpu(),
                "meta": encode(dict(value.meta)), "ops": encode(list(value.applied_operations))}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        try:
            return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
        except TypeError:  # a dtype torch has no tensor for: the values, exactly, as a list
            return {_TAG: "ndarray_list", "data": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, Mapping):
        return {encode(k): encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    raise TypeError(f"the disk cache stores tensors, numbers and strings only, not {type(value).__name__}")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` (enums come back as their plain values)."""
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "meta_tensor":
            return MetaTensor(value["data"], meta=decode(value["meta"]), applied_operations=decode(value["ops"]))
        if tag == "ndarray":
            return value["data"].numpy()
        if tag == "ndarray_list":
            return np.array(value["data"], dtype=np.dtype(value["dtype"]))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class TensorDiskCache(PersistentDataset):
    """``PersistentDataset`` whose files hold tensors only and load with ``weights_only=True``.

    Same arguments as ``PersistentDataset``; ``pickle_module``, ``pickle_protocol`` and
    ``weights_only`` are ignored (files are written by ``torch.save`` and always read safely).
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        path = Path(self.cache_dir) / f"{name}.pt"
        if path.is_file():
            cached = _load(path)
            if cached is not None:
                return decode(cached)
        encoded = {"format": FORMAT, "item": encode(self._pre_transform(deepcopy(item_transformed)))}
        try:
            with atomic_path(path) as tmp:
                torch.save(encoded, tmp)
        except PermissionError:  # a read-only cache folder: compute without caching
            log.warning("cannot write the disk cache file %s; the item is recomputed each time", path)
        # the same objects a later cache hit gives back
        return decode(encoded["item"])


def _load(path: Path) -> Any | None:
    """A cache file's item, or None (the file deleted) when it is not one this module wrote."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(payload, dict) and payload.get("format") == FORMAT and "item" in payload:
            return payload["item"]
        reason = "not a tensor-only cache file"
    except Exception as err:  # noqa: BLE001 - an old pickled cache, a planted object, a truncated write
        reason = f"{type(err).__name__}: {str(err).split('.')[0]}"
    log.warning("disk cache file %s is not a tensor-only cache file (%s); it was not executed and is rebuilt",
                path, reason)
    path.unlink(missing_ok=True)
    return None
