"""Manifests: the CSV that lists one row per scan (subject, image, mask?, label?, split?, attributes...).

``read_manifest`` validates a user's CSV; ``build_manifest`` makes one from an images glob,
an optional masks glob and attribute tables (joined on an ID column); ``write_manifest``
writes it atomically.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medlatent.errors import InputError
from medlatent.io import atomic_path

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("subject", "image")
PATH_COLUMNS = ("image", "mask")
# longest first, so ".nii.gz" is stripped whole rather than as ".gz"
IMAGE_SUFFIXES = (".nii.gz", ".gipl.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hdr", ".img", ".gipl",
                  ".vtk", ".npz", ".npy")


def subject_from_filename(path: str | os.PathLike) -> str:
    """``/x/IXI012-HH-1211_T1.nii.gz`` -> ``IXI012-HH-1211_T1`` (the name without its image suffix)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Columns: ``subject``, ``image`` (required), ``mask``, ``label``, ``split`` (optional) and any
    attribute columns. ``subject`` is read as a string; relative ``image``/``mask`` paths are
    resolved against the CSV's folder and returned absolute. Files are not opened here
    (that is :func:`transforms.check.check_manifest`).

    Returns:
        DataFrame with one row per scan, index 0..N-1.

    Raises:
        InputError: missing file, empty file, missing required column or empty cells in one (names the
            file, column and rows).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"subject": str, "image": str, "mask": str, "split": str})
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: manifest is empty (expected a header with columns {list(REQUIRED_COLUMNS)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV: {err}") from None
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            raise InputError(f"{path}: missing required column '{column}' (columns: {list(df.columns)})")
    if df.empty:
        raise InputError(f"{path}: manifest has a header but no rows")
    for column in REQUIRED_COLUMNS:
        empty = df.index[df[column].isna() | (df[column].astype(str).str.strip() == "")]
        if len(empty):
            raise InputError(f"{path}: column '{column}' is empty in rows {_rows(empty)}")
    df["subject"] = df["subject"].astype(str).str.strip()
    base = path.resolve().parent
    for column in PATH_COLUMNS:
        if column in df.columns:
            df[column] = [_absolute(value, base) for value in df[column]]
    return df.reset_index(drop=True)


def _rows(index: Sequence[int], limit: int = 10) -> str:
    """CSV row numbers as a user sees them in a spreadsheet (header = row 1, first data row = row 2)."""
    rows = [str(int(i) + 2) for i in list(index)[:limit]]
    more = f" (+{len(index) - limit} more)" if len(index) > limit else ""
    return ", ".join(rows) + more


def _absolute(value: Any, base: Path) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).absolute())


def _glob_files(pattern: str, what: str) -> list[str]:
    files = sorted(str(Path(f).absolute()) for f in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if Path(f).is_file())
    if not files:
        raise InputError(f"--{what} {pattern!r}: no files match")
    return files


def _id_pattern(subject_id: str) -> re.Pattern:
    # a file belongs to ID when its stem is the ID or starts with the ID followed by _ - or .
    return re.compile(re.escape(subject_id) + r"(?:[_.\-]|$)")


def _match(ids: Sequence[str], stems: Sequence[str]) -> dict[int, str]:
    """file index -> ID; the longest matching ID wins (``IXI01`` must not take ``IXI012-...``)."""
    matched: dict[int, str] = {}
    for subject_id in sorted(set(ids), key=len, reverse=True):
        pattern = _id_pattern(subject_id)
        for i, stem in enumerate(stems):
            if i not in matched and pattern.match(stem):
                matched[i] = subject_id
    return matched


def _read_table(table: Mapping[str, Any]) -> pd.DataFrame:
    """One attribute table -> DataFrame indexed by its ID column (as strings)."""
    if not isinstance(table, Mapping) or "path" not in table or "id_column" not in table:
        raise InputError(f"data.tables entry {table!r}: expected a mapping with 'path' and 'id_column'")
    path = Path(table["path"]).expanduser()
    if not path.is_file():
        raise InputError(f"table not found: {path}")
    id_column = str(table["id_column"])
    try:
        df = pd.read_csv(path, dtype={id_column: str})
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: table is empty") from None
    df.columns = [str(c) for c in df.columns]
    if id_column not in df.columns:
        raise InputError(f"{path}: id column '{id_column}' not found (columns: {list(df.columns)[:20]})")
    dup = df.index[df[id_column].duplicated()]
    if len(dup):
        raise InputError(f"{path}: duplicate IDs in column '{id_column}' at rows {_rows(dup)}")
    df = df.set_index(id_column)
    columns = table.get("columns")
    if not columns:
        return df
    out = pd.DataFrame(index=df.index)
    for new_name, sources in dict(columns).items():
        sources = [str(s) for s in (sources if isinstance(sources, (list, tuple)) else [sources])]
        missing = [s for s in sources if s not in df.columns]
        if missing:
            raise InputError(f"{path}: columns {missing} (for '{new_name}') not found")
        values = df[sources].apply(pd.to_numeric, errors="coerce")
        # min_count: a row whose sources are all missing stays missing instead of summing to 0
        out[str(new_name)] = values.sum(axis=1, min_count=len(sources))
    return out


def build_manifest(images: str, masks: str | None = None, tables: Sequence[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """Build a manifest from an images glob, an optional masks glob and attribute tables.

    Subject ID = the image file name without its suffix (``IXI012-HH-1211_T1``). A table row with
    ID ``X`` belongs to the file whose name is ``X`` or starts with ``X`` followed by ``_``, ``-``
    or ``.``; the subject becomes the table's ID. Masks are matched to subjects the same way.
    Each table is ``{"path": CSV, "id_column": "MRID", "columns"?: {new: [col, ...]}}``: without
    ``columns`` every column is joined, with it each new column is the sum of the listed ones.

    Images without a row in some table are dropped (a warning gives the count); table rows
    without an image are ignored.

    Returns:
        DataFrame ``subject, image[, mask], <table columns>...`` sorted by subject.
    """
    files = _glob_files(images, "images")
    df = pd.DataFrame({"subject": [subject_from_filename(f) for f in files], "image": files})
    for table in tables or ():
        tab = _read_table(table)
        matched = _match(list(tab.index), list(df["subject"]))
        dropped = len(df) - len(matched)
        if dropped:
            log.warning("%d of %d images have no row in %s; dropped", dropped, len(df), table["path"])
        keep = sorted(matched)
        df = df.iloc[keep].copy()
        df["subject"] = [matched[i] for i in keep]
        clash = [c for c in tab.columns if c in df.columns]
        if clash:
            raise InputError(f"{table['path']}: columns {clash} already in the manifest; rename them with 'columns'")
        df = df.join(tab, on="subject").reset_index(drop=True)
    if df.empty:
        raise InputError(f"--images {images!r}: no image matched a row of the tables")
    if masks:
        mask_files = _glob_files(masks, "masks")
        mask_stems = [subject_from_filename(f) for f in mask_files]
        by_subject = {sid: mask_files[i] for i, sid in _match(list(df["subject"]), mask_stems).items()}
        df.insert(2, "mask", [by_subject.get(s) for s in df["subject"]])
        missing = int(df["mask"].isna().sum())
        if missing:
            log.warning("%d of %d images have no mask matching %s", missing, len(df), masks)
    dup = df["subject"][df["subject"].duplicated()].unique()
    if len(dup):
        raise InputError(f"--images {images!r}: several files map to the same subject(s) {list(dup)[:5]}")
    return df.sort_values("subject").reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest CSV atomically (a temporary file renamed into place); returns the path."""
    path = Path(path).expanduser()
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return path
