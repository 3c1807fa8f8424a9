"""Split records: turn the ``data`` config section into per-split lists of dicts the pipeline loads.

Sources: ``data.manifest`` (a manifest CSV or a MedMNIST ``.npz``) or ``data.images`` (a glob,
with ``data.masks`` and ``data.tables``, built by :func:`transforms.manifest.build_manifest`).
Labels, attributes and splits are validated here, once, where they enter.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from medlatent.errors import InputError
from medlatent.io import atomic_path
from medlatent.transforms.attributes import STATISTICS, shape_statistics
from medlatent.transforms.check import duplicate_problems
from medlatent.transforms.manifest import build_manifest, read_manifest
from medlatent.transforms.medmnist import MASK_THRESHOLD, load_npz
from medlatent.transforms.splits import SPLITS, assign_folds, assign_splits

log = logging.getLogger(__name__)

SHAPE_PREFIX = "shape_"


@dataclass
class DataInfo:
    """What a model needs to know about the data, beyond the tensors.

    Attributes:
        classes: class names in class-index order (``label`` i is ``classes[i]``), or None without labels.
        attributes: attribute names, in the order of ``record["attrs"]``.
        source: the manifest, npz or images glob the records came from.
        counts: number of records per split.
        label: the manifest column the labels came from, or None.
    """

    classes: list[str] | None
    attributes: list[str]
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    label: str | None = None


def _rows(df: pd.DataFrame, mask: pd.Series, limit: int = 10) -> str:
    """Manifest rows as 'row N (subject S)', with CSV row numbers (header = row 1)."""
    picked = df.index[mask.to_numpy()]
    parts = [f"row {int(i) + 2} (subject {df.at[i, 'subject']})" for i in picked[:limit]]
    return ", ".join(parts) + (f" and {len(picked) - limit} more" if len(picked) > limit else "")


def _npz_frame(path: Path, data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """An npz as a manifest-like frame (subject, label, split) plus the volumes by subject."""
    data = load_npz(path)
    frames, volumes = [], {}
    for split in SPLITS:
        images, labels = data[split]
        width = max(4, len(str(len(images))))
        subjects = [f"{split}_{i:0{width}d}" for i in range(len(images))]
        frames.append(pd.DataFrame({"subject": subjects, "label": labels, "split": split}))
        volumes.update(zip(subjects, images))
    df = pd.concat(frames, ignore_index=True)
    wanted = [a for a in data_cfg.get("attributes") or [] if str(a).startswith(SHAPE_PREFIX)]
    if wanted:
        shape = _npz_shape_table(path, df["subject"].tolist(), volumes, data_cfg.get("cache_dir"))
        df = df.merge(shape, on="subject", how="left")
    return df, volumes


def _npz_shape_table(path: Path, subjects: list[str], volumes: Mapping[str, np.ndarray],
                     cache_dir: str | None) -> pd.DataFrame:
    """``shape_<stat>`` of every binarised npz volume (1 mm voxels), cached as CSV in ``cache_dir``.

    The cache file name carries the npz's MD5, so a changed file is never served stale numbers.
    """
    cache = None
    if cache_dir:
        digest = hashlib.md5(path.read_bytes()).hexdigest()[:12]
        cache = Path(cache_dir) / f"{path.stem}-shape-{digest}.csv"
        if cache.is_file():
            table = pd.read_csv(cache, dtype={"subject": str})
            if list(table["subject"]) == subjects:
                return table
    rows = []
    for subject in subjects:
        binary = sitk.GetImageFromArray((volumes[subject] > MASK_THRESHOLD).astype(np.uint8))
        stats = shape_statistics(binary, [1])
        rows.append({"subject": subject, **{f"{SHAPE_PREFIX}{k}": v for k, v in stats.items()}})
    table = pd.DataFrame(rows)
    if cache is not None:
        with atomic_path(cache, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    return table


def _load_frame(data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, np.ndarray] | None, str]:
    manifest, images = data_cfg.get("manifest"), data_cfg.get("images")
    if manifest and images:
        raise InputError("config keys 'data.manifest' and 'data.images': give one source, not both")
    if manifest:
        path = Path(manifest).expanduser()
        if path.suffix.lower() == ".npz":
            df, volumes = _npz_frame(path, data_cfg)
            return df, volumes, str(path)
        return read_manifest(path), None, str(path)
    if images:
        return build_manifest(images, data_cfg.get("masks"), data_cfg.get("tables") or []), None, str(images)
    raise InputError("config key 'data.manifest' (a CSV or .npz) or 'data.images' (a glob) must be set")


def _class_names(values: pd.Series) -> list[str]:
    """Sorted class names: numerically when every label is a number (so 2 < 10), else as text."""
    unique = values.unique()
    numeric = pd.to_numeric(pd.Series(unique), errors="coerce")
    if numeric.notna().all():
        ordered = [unique[i] for i in np.argsort(numeric.to_numpy(), kind="stable")]
        return [str(int(v)) if float(v).is_integer() else str(v) for v in pd.to_numeric(pd.Series(ordered))]
    return sorted(str(v) for v in unique)


def _label_text(value: Any) -> str:
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.notna(number) and float(number).is_integer():
        return str(int(number))
    return str(value)


def load_split_records(data_cfg: Mapping[str, Any]) -> tuple[dict[str, list[dict]], DataInfo]:
    """Records per split, validated, from the ``data`` section of a config.

    Each record: ``{"image": str path | np.ndarray float32 [1,D,H,W], "mask"?: path | array,
    "label"?: int class index, "attrs"?: np.float32 [A] (raw values, order of data.attributes),
    "subject": str, "row"?: int}`` (``row``: the manifest CSV's row, header = row 1, for messages;
    only for a CSV manifest).

    Labels come from ``data.label`` (a column name), else from a ``label`` column when there is one.
    Splits come from a ``split`` column (it wins), the npz's official splits, or ``data.split``
    (stratified by label): :func:`transforms.splits.assign_folds` when it names ``folds`` (fold
    ``fold`` is the test part), else :func:`transforms.splits.assign_splits`.

    Returns:
        ``({"train": [...], "val": [...], "test": [...]}, DataInfo)``.

    Raises:
        InputError: a subject listed twice (names the rows); unknown attribute/label column (lists those available); missing or non-numeric
            attribute values, missing labels or bad split names (names the rows) unless ``data.drop_missing``.
    """
    df, volumes, source = _load_frame(data_cfg)
    duplicates = duplicate_problems(df["subject"])
    if duplicates:
        raise InputError(f"{source}: each subject must appear once; {'; '.join(duplicates[:10])}")
    # CSV row numbers (header = row 1) for messages, as `medlatent data check` counts them
    from_csv = volumes is None and bool(data_cfg.get("manifest"))
    drop_missing = bool(data_cfg.get("drop_missing"))

    attributes = [str(a) for a in data_cfg.get("attributes") or []]
    missing_cols = [a for a in attributes if a not in df.columns]
    if missing_cols:
        available = [c for c in df.columns if c not in ("subject", "image", "mask", "split")]
        extra = f"; for .npz sources also {SHAPE_PREFIX}<stat> with stat in {list(STATISTICS)}" if volumes else ""
        raise InputError(f"config key 'data.attributes': {missing_cols} not in {source} "
                         f"(available: {available}{extra})")
    label_col = data_cfg.get("label") or ("label" if "label" in df.columns else None)
    if label_col is not None and label_col not in df.columns:
        raise InputError(f"config key 'data.label': column '{label_col}' not in {source} (columns: {list(df.columns)})")

    bad = pd.Series(False, index=df.index)
    if attributes:
        values = df[attributes].apply(pd.to_numeric, errors="coerce")
        bad_attr = ~np.isfinite(values.to_numpy(dtype=np.float64)).all(axis=1)
        bad |= pd.Series(bad_attr, index=df.index)
        if bad_attr.any() and not drop_missing:
            raise InputError(f"{source}: missing or non-numeric values in attributes {attributes} at "
                             f"{_rows(df, pd.Series(bad_attr, index=df.index))} (set data.drop_missing to skip them)")
    if label_col is not None:
        bad_label = df[label_col].isna() | (df[label_col].astype(str).str.strip() == "")
        if bad_label.any() and not drop_missing:
            raise InputError(f"{source}: missing '{label_col}' label at {_rows(df, bad_label)} "
                             f"(set data.drop_missing to skip them)")
        bad |= bad_label
    if bad.any():
        log.warning("dropping %d rows with missing attribute/label values from %s", int(bad.sum()), source)
        df = df[~bad]
        if df.empty:
            raise InputError(f"{source}: no rows left after dropping rows with missing values")

    classes = None
    labels = None
    if label_col is not None:
        texts = df[label_col].map(_label_text)
        classes = _class_names(texts)
        index = {name: i for i, name in enumerate(classes)}
        labels = texts.map(index).astype(int)

    if "split" in df.columns:
        splits = df["split"].astype(str).str.strip().str.lower()
        wrong = ~splits.isin(SPLITS)
        if wrong.any():
            raise InputError(f"{source}: column 'split' must be one of {list(SPLITS)}; bad values at {_rows(df, wrong)}")
    else:
        split_cfg = dict(data_cfg.get("split") or {})
        subjects, strata = df["subject"].tolist(), None if labels is None else labels.tolist()
        val, seed = float(split_cfg.get("val", 0.1)), int(split_cfg.get("seed", 0))
        try:
            if split_cfg.get("folds"):
                assigned = assign_folds(subjects, strata, folds=int(split_cfg["folds"]),
                                        fold=int(split_cfg.get("fold", 0)), val=val, seed=seed)
            else:
                assigned = assign_splits(subjects, strata, val=val, test=float(split_cfg.get("test", 0.1)), seed=seed)
            splits = pd.Series(assigned, index=df.index)
        except ValueError as err:
            raise InputError(f"config key 'data.split': {err}") from None

    attr_values = df[attributes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32) if attributes else None
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for pos, (i, row) in enumerate(df.iterrows()):
        subject = str(row["subject"])
        if volumes is not None:
            volume = volumes[subject]
            record: dict[str, Any] = {"image": volume[None].astype(np.float32),
                                      # masks stay uint8 (a quarter of the memory); the pipeline casts them
                                      "mask": (volume[None] > MASK_THRESHOLD).astype(np.uint8)}
        else:
            record = {"image": row["image"]}
            mask = row.get("mask")
            if isinstance(mask, str) and mask:
                record["mask"] = mask
        if labels is not None:
            record["label"] = int(labels.loc[i])
        if attr_values is not None:
            record["attrs"] = attr_values[pos]
        record["subject"] = subject
        if from_csv:
            record["row"] = int(i) + 2
        records[splits.loc[i]].append(record)
    info = DataInfo(classes=classes, attributes=attributes, source=source,
                    counts={s: len(r) for s, r in records.items()}, label=label_col)
    return records, info
