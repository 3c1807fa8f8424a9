"""Manifest check: read every listed file once, report each bad row by number and file, summarise the data.

Used by ``medlatent data check MANIFEST`` (exit 2 when ``problems`` is not empty). The voxels are
actually read (not just the header), because a truncated ``.nii.gz`` has an intact header and fails
only when its data is decompressed; the header is read first, so a file that claims more than
:data:`MAX_VOXELS` voxels is refused before anything is allocated.

Each check lives here once and is shared with training: :func:`header_problem` (before reading),
:func:`content_problems` and :func:`grid_problem` (on the read voxels) are also what the pipeline's
loader (``transforms.pipeline.LoadVolumed``) runs on every scan it reads, and
:func:`duplicate_problems` is what ``transforms.records.load_split_records`` refuses.
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
from medlatent.transforms.sitk_reader import SITK_SUFFIXES, sitk_affine_ras

# affines closer than this (mm, per entry) count as the same grid
AFFINE_TOLERANCE = 1e-3
# a header claiming more voxels than this (a 1024^3 volume) is refused before its data is read
MAX_VOXELS = 2**30
NIFTI_SUFFIXES = (".nii", ".nii.gz")

__all__ = ["CheckReport", "check_manifest", "header_problem", "content_problems", "grid_problem", "shape_problem",
           "duplicate_problems", "MAX_VOXELS", "AFFINE_TOLERANCE"]


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
    problems: list[str]  # content_problems of the voxels
    dtype: str


# what a reader raises for a file that is not what its name says, or is cut short
READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, RuntimeError, ValueError,
               nib.filebasedimages.ImageFileError)


def _header_shape(path: str) -> tuple[int, ...] | None:
    """The array shape a file's header claims (components last), or None for a format read elsewhere."""
    name = path.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return tuple(int(n) for n in nib.load(path).shape)  # header only: the data is read lazily
    if name.endswith(SITK_SUFFIXES):
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        components = reader.GetNumberOfComponents()
        return tuple(int(n) for n in reader.GetSize()) + ((components,) if components > 1 else ())
    return None


def header_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an image, judged before its voxels are (None: read it).

    Refuses a missing or zero-byte file, a header nibabel/SimpleITK cannot parse, and a header
    that claims more than :data:`MAX_VOXELS` voxels (no memory is allocated for it).

    Returns:
        The problem as a phrase to follow the file's name (``"is empty (0 bytes)"``), or None.
    """
    path = str(path)
    if not Path(path).is_file():
        return "not found"
    if Path(path).stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        shape = _header_shape(path)
    except READ_ERRORS as err:
        return f"is not a readable image: {type(err).__name__}: {err}"
    if shape is not None and int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        return (f"has a header claiming shape {shape} ({int(np.prod(shape, dtype=np.float64)):,} voxels), more than "
                f"2^30; refused before reading it")
    return None


def content_problems(data: np.ndarray, column: str = "image") -> list[str]:
    """What is wrong with a read volume ``data`` (any shape): phrases to follow the file's name.

    NaN or Inf voxels (any column); every voxel the same (images only: a constant mask is allowed).
    """
    problems = []
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        problems.append("contains NaN or Inf voxels")
    if column == "image" and data.size and np.nanmin(data) == np.nanmax(data):
        problems.append("is constant (every voxel has the same value)")
    return problems


def grid_problem(mask_shape: tuple[int, ...], mask_affine: np.ndarray, image_shape: tuple[int, ...],
                 image_affine: np.ndarray) -> str | None:
    """Why a mask does not lie on its image's voxel grid (spatial shapes, then affines), or None."""
    if tuple(mask_shape[:3]) != tuple(image_shape[:3]):
        return f"has shape {tuple(mask_shape[:3])} but its image has {tuple(image_shape[:3])}"
    if not np.allclose(np.asarray(mask_affine, dtype=np.float64), np.asarray(image_affine, dtype=np.float64),
                       atol=AFFINE_TOLERANCE):
        return "has a different affine (orientation/spacing/origin) from its image"
    return None


def duplicate_problems(subjects: pd.Series) -> list[str]:
    """``rows 2, 5: duplicate subject 'x'`` for each subject listed twice (CSV rows: header = row 1).

    Args:
        subjects: the manifest's ``subject`` column, indexed 0..N-1 as :func:`read_manifest` returns it.
    """
    dup = subjects.duplicated(keep=False)
    return [f"rows {', '.join(str(int(r) + 2) for r in rows)}: duplicate subject '{subject}'"
            for subject, rows in subjects[dup].groupby(subjects[dup]).groups.items()]


def _read_volume(path: str, column: str) -> _Volume:
    """Read a file's voxels and geometry once (nibabel for NIfTI, SimpleITK otherwise)."""
    if path.lower().endswith(NIFTI_SUFFIXES):
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
    orientation = "".join(nib.aff2axcodes(affine)) if affine.shape == (4, 4) else "?"
    return _Volume(tuple(int(s) for s in data.shape), np.asarray(affine, dtype=np.float64), spacing,
                   orientation, content_problems(data, column), dtype)


def _is_3d(shape: tuple[int, ...]) -> bool:
    # trailing singleton dimensions (x, y, z, 1) are still one 3D volume
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return len(shape) == 3


def shape_problem(shape: tuple[int, ...]) -> str:
    """The phrase for a file that is not one 3D volume."""
    return f"has shape {tuple(shape)}; expected a 3D volume (one channel: not 2D, 4D or multi-component)"


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
    problems.extend(duplicate_problems(df["subject"]))

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
            before = header_problem(file)
            if before is not None:
                problems.append(f"{where(i)}: {column} {file} {before}")
                continue
            try:
                vol = _read_volume(file, column)
            except READ_ERRORS as err:
                problems.append(f"{where(i)}: {column} {file} is unreadable or truncated: {type(err).__name__}: {err}")
                continue
            if not _is_3d(vol.shape):
                problems.append(f"{where(i)}: {column} {file} {shape_problem(vol.shape)}")
            problems.extend(f"{where(i)}: {column} {file} {problem}" for problem in vol.problems)
            if column == "image":
                image_vol = vol
                volumes.append(vol)
            elif image_vol is not None:
                grid = grid_problem(vol.shape, vol.affine, image_vol.shape, image_vol.affine)
                if grid is not None:
                    problems.append(f"{where(i)}: mask {file} {grid}")
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
