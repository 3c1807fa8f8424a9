"""Shape attributes of labelled structures (volume, surface, elongation, ...) with SimpleITK.

A *group* is a named set of label values (``ventricles=51,52``) that is binarised into one
object; :func:`shape_statistics` measures it with ``LabelShapeStatisticsImageFilter``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from medlatent.errors import InputError

# output name -> SimpleITK getter on LabelShapeStatisticsImageFilter (label 1 of the binarised group)
STATISTICS: dict[str, str] = {
    "volume_mm3": "GetPhysicalSize",
    "surface_area_mm2": "GetPerimeter",
    "elongation": "GetElongation",
    "flatness": "GetFlatness",
    "roundness": "GetRoundness",
    "feret_diameter_mm": "GetFeretDiameter",
    "equivalent_spherical_radius_mm": "GetEquivalentSphericalRadius",
}

_GROUP = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*$")


def parse_label_groups(specs: Sequence[str]) -> dict[str, list[int]]:
    """``["ventricles=51,52", "hippocampus=47,48"]`` -> ``{"ventricles": [51, 52], "hippocampus": [47, 48]}``.

    Raises:
        InputError: an argument that is not ``name=int[,int...]`` or a repeated name (names the argument).
    """
    groups: dict[str, list[int]] = {}
    for spec in specs:
        match = _GROUP.match(str(spec))
        if not match:
            raise InputError(f"--labels {spec!r}: expected NAME=LABEL[,LABEL...] such as ventricles=51,52")
        name, values = match.group(1), [int(v) for v in match.group(2).split(",")]
        if name in groups:
            raise InputError(f"--labels {spec!r}: group '{name}' given twice")
        groups[name] = values
    if not groups:
        raise InputError("--labels: give at least one group such as ventricles=51,52")
    return groups


def shape_statistics(label_image: sitk.Image, labels: Sequence[int]) -> dict[str, float]:
    """Shape statistics of the union of ``labels`` in an integer label image.

    Args:
        label_image: a 3D SimpleITK label map (physical spacing is used: mm, mm^2, mm^3).
        labels: label values merged into one object.

    Returns:
        ``{stat: value}`` for every name in :data:`STATISTICS`. An empty group gives volume 0 and NaN
        for the rest (shape is undefined without voxels).
    """
    values = sitk.GetArrayViewFromImage(label_image)
    binary_array = np.isin(values, np.asarray(list(labels))).astype(np.uint8)
    if not binary_array.any():
        return {name: (0.0 if name == "volume_mm3" else math.nan) for name in STATISTICS}
    binary = sitk.GetImageFromArray(binary_array)
    binary.CopyInformation(label_image)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()
    shape.ComputePerimeterOn()
    shape.Execute(binary)
    return {name: float(getattr(shape, getter)(1)) for name, getter in STATISTICS.items()}


def label_map_statistics(label_image: sitk.Image, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """``{"<group>_<stat>": value}`` for every group of one label image."""
    row: dict[str, float] = {}
    for name, labels in groups.items():
        row.update({f"{name}_{stat}": value for stat, value in shape_statistics(label_image, labels).items()})
    return row


def compute_attributes(manifest_df: pd.DataFrame, groups: Mapping[str, Sequence[int]],
                       column: str = "mask") -> pd.DataFrame:
    """Shape attributes of each subject's label map (the manifest's ``mask`` column).

    Returns:
        DataFrame with one row per manifest row: ``subject`` then ``<group>_<stat>`` columns,
        joinable on ``subject``.

    Raises:
        InputError: no ``mask`` column, an empty cell, or an unreadable label map (names the row and file).
    """
    if column not in manifest_df.columns:
        raise InputError(f"manifest has no '{column}' column with label maps (columns: {list(manifest_df.columns)})")
    rows = []
    for i, (subject, path) in enumerate(zip(manifest_df["subject"], manifest_df[column])):
        if path is None or (isinstance(path, float) and pd.isna(path)):
            raise InputError(f"manifest row {i + 2} (subject {subject}): empty '{column}' cell")
        if not Path(path).is_file():
            raise InputError(f"manifest row {i + 2} (subject {subject}): label map not found: {path}")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputError(f"manifest row {i + 2} (subject {subject}): cannot read {path}: {err}") from None
        rows.append({"subject": str(subject), **label_map_statistics(image, groups)})
    return pd.DataFrame(rows)
