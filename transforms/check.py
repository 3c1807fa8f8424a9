"""Manifest check: read every listed file once, report each bad row by number and file, summarise the data.

Used by ``medlatent data check MANIFEST`` (exit 2 when ``problems`` is not empty). The voxels are
actually read (not just the header), because a truncated ``.nii.gz`` has an intact header and fails
only when its data is decompressed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk

from medlatent.transforms.manifest import read_manifest
from medlatent.transforms.sitk_reader import sitk_affine_ras

# affines closer than this (mm, per entry) count as the same grid
AFFINE_TOLERANCE = 1e-3


@dataclass
class CheckReport:
    """The outcome of :func:`check_manifest`.

    Attributes:
        problems: one line per problem, each naming the CSV row number (header = row 1), subject and file.
        summary: a plain-text table of counts, shapes, spacings, orientations, label balance, attribute ranges.
        n_rows: number of manifest rows checked.
    """

    problems: list[str] = field(default_factory=list)
    summary: str = ""
    n_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Volume:
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]
    orientation: str
    finite: bool
    constant: bool
    dtype: str


def _read_volume(path: str) -> _Volume:
    """Read a file's voxels and geometry once (nibabel for NIfTI, SimpleITK otherwise)."""
    if path.lower().endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)  # decompresses everything: catches truncated gzip
        affine = img.affine
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        dtype = str(img.get_data_dtype())
    else:
        img = sitk.ReadImage(path)
        data = sitk.GetArrayViewFromImage(img)
        affine = sitk_affine_ras(img) if img.GetDimension() == 3 else np.eye(4)
        spacing = tuple(float(s) for s in img.GetSpacing())
        dtype = img.GetPixelIDTypeAsString()
        if img.GetNumberOfComponentsPerPixel() > 1:
            data = np.moveaxis(data, -1, 0)  # report vector images as 4D
    finite = bool(np.isfinite(data).all()) if np.issubdtype(data.dtype, np.floating) else True
    lo, hi = (np.nanmin(data), np.nanmax(data)) if data.size else (0, 0)
    orientation = "".join(nib.aff2axcodes(affine)) if affine.shape == (4, 4) else "?"
    return _Volume(tuple(int(s) for s in data.shape), np.asarray(affine, dtype=np.float64), spacing,
                   orientation, finite, bool(lo == hi), dtype)


def _is_3d(shape: tuple[int, ...]) -> bool:
    # trailing singleton dimensions (x, y, z, 1) are still one 3D volume
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return len(shape) == 3


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def check_manifest(path: str | os.PathLike, attributes: list[str] | None = None,
                   label: str | None = None) -> CheckReport:
    """Validate a manifest and every file it lists.

    Detects missing or unreadable files, truncated/corrupt NIfTI, non-3D images, NaN/Inf voxels,
    constant images, duplicate subjects, missing or non-numeric attribute values, missing labels,
    and masks whose shape or affine differ from their image.

    Args:
        path: the manifest CSV.
        attributes: attribute columns that must be numeric in every row (None: none required).
        label: the label column (None: ``label`` if present); its balance is summarised.

    Returns:
        A :class:`CheckReport`. Structural problems with the CSV itself (missing file or columns)
        raise InputError instead, from :func:`transforms.manifest.read_manifest`.
    """
    df = read_manifest(path)
    problems: list[str] = []
    attributes = list(attributes or [])
    label = label or ("label" if "label" in df.columns else None)

    def where(i: int) -> str:
        return f"row {i + 2} (subject {df.at[i, 'subject']})"

    for column in attributes + ([label] if label else []):
        if column not in df.columns:
            problems.append(f"{path}: column '{column}' not found (columns: {list(df.columns)})")
    dup = df["subject"].duplicated(keep=False)
    for subject, rows in df[dup].groupby("subject").groups.items():
        problems.append(f"rows {', '.join(str(r + 2) for r in rows)}: duplicate subject '{subject}'")

    volumes: list[_Volume] = []
    for i in range(len(df)):
        image_vol = None
        for column in ("image", "mask"):
            if column not in df.columns:
                continue
            file = df.at[i, column]
            if _missing(file):
                if column == "image":
                    problems.append(f"{where(i)}: empty 'image' cell")
                continue
            if not Path(file).is_file():
                problems.append(f"{where(i)}: {column} file not found: {file}")
                continue
            try:
                vol = _read_volume(file)
            except (OSError, EOFError, zlib.error, gzip.BadGzipFile, RuntimeError, ValueError, nib.filebasedimages.ImageFileError) as err:
                problems.append(f"{where(i)}: {column} {file} is unreadable or truncated: {type(err).__name__}: {err}")
                continue
            if not _is_3d(vol.shape):
                problems.append(f"{where(i)}: {column} {file} has shape {vol.shape}; expected a 3D volume")
            if not vol.finite:
                problems.append(f"{where(i)}: {column} {file} contains NaN or Inf voxels")
            if column == "image":
                if vol.constant:
                    problems.append(f"{where(i)}: image {file} is constant (every voxel has the same value)")
                image_vol = vol
                volumes.append(vol)
            elif image_vol is not None:
                if vol.shape[:3] != image_vol.shape[:3]:
                    problems.append(f"{where(i)}: mask {file} has shape {vol.shape[:3]} but its image has "
                                    f"{image_vol.shape[:3]}")
                elif not np.allclose(vol.affine, image_vol.affine, atol=AFFINE_TOLERANCE):
                    problems.append(f"{where(i)}: mask {file} has a different affine (orientation/spacing/origin) "
                                    f"from its image")
        for column in attributes:
            if column in df.columns:
                value = pd.to_numeric(pd.Series([df.at[i, column]]), errors="coerce").iloc[0]
                if pd.isna(value) or not np.isfinite(value):
                    problems.append(f"{where(i)}: attribute '{column}' is missing or not a number "
                                    f"({df.at[i, column]!r})")
        if label and label in df.columns and _missing(df.at[i, label]):
            problems.append(f"{where(i)}: label '{label}' is missing")

    report = CheckReport(problems=problems, n_rows=len(df))
    report.summary = _summary(df, volumes, attributes, label)
    return report


def _counts(values: list, limit: int = 5) -> str:
    common = Counter(values).most_common()
    text = ", ".join(f"{v} x{n}" for v, n in common[:limit])
    return text + (f", ... ({len(common) - limit} more)" if len(common) > limit else "")


def _summary(df: pd.DataFrame, volumes: list[_Volume], attributes: list[str], label: str | None) -> str:
    lines = [
        ("rows", str(len(df))),
        ("subjects", str(df["subject"].nunique())),
        ("images read", str(len(volumes))),
        ("masks", str(int(df["mask"].notna().sum())) if "mask" in df.columns else "0"),
        ("shapes", _counts(["x".join(map(str, v.shape)) for v in volumes])),
        ("spacings (mm)", _counts(["x".join(f"{s:.3g}" for s in v.spacing) for v in volumes])),
        ("orientations", _counts([v.orientation for v in volumes])),
        ("dtypes", _counts([v.dtype for v in volumes])),
    ]
    if "split" in df.columns:
        lines.append(("splits", _counts(df["split"].astype(str).tolist())))
    if label and label in df.columns:
        lines.append((f"label '{label}'", _counts(df[label].dropna().astype(str).tolist(), limit=20)))
    for column in attributes:
        if column in df.columns:
            values = pd.to_numeric(df[column], errors="coerce")
            lines.append((f"attribute '{column}'", f"min {values.min():.4g}, median {values.median():.4g}, "
                                                    f"max {values.max():.4g}, missing/non-numeric {int(values.isna().sum())}"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
