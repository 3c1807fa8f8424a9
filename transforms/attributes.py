"""Shape attributes of labelled structures (volume, surface, elongation, ...) with SimpleITK.

A *group* is a named set of label values (``ventricles=51,52``) that is binarised into one
object; :func:`shape_statistics` measures it with ``LabelShapeStatisticsImageFilter``.
A *wall* (``wall=1,2,3,4:1``: outer labels, colon, inner labels) is the shell between an outer
object and the inner one it encloses (the myocardium between the epicardium and the LV cavity);
:func:`wall_thickness` measures its mean thickness slice by slice with SimpleITK distance maps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

_LABELS = r"(-?\d+(?:\s*,\s*-?\d+)*)"
_GROUP = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*" + _LABELS + r"(?:\s*:\s*" + _LABELS + r")?\s*$")


@dataclass(frozen=True)
class Wall:
    """The shell between the union of ``outer`` labels and the union of ``inner`` labels it encloses."""

    outer: tuple[int, ...]
    inner: tuple[int, ...]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_label_groups(specs: Sequence[str]) -> dict[str, list[int] | Wall]:
    """``["ventricles=51,52", "wall=1,2,3,4:1"]`` -> ``{"ventricles": [51, 52], "wall": Wall((1, 2, 3, 4), (1,))}``.

    ``NAME=OUTER:INNER`` names a wall (its thickness is measured); ``NAME=L1,L2`` a group (its shape).

    Raises:
        InputError: an argument that is not ``name=int[,int...]`` or a repeated name (names the argument).
    """
    groups: dict[str, list[int]] = {}
    for spec in specs:
        match = _GROUP.match(str(spec))
        if not match:
            raise InputError(f"--labels {spec!r}: expected NAME=LABEL[,LABEL...] such as ventricles=51,52, "
                             f"or NAME=OUTER:INNER such as wall=1,2,3,4:1")
        name = match.group(1)
        if name in groups:
            raise InputError(f"--labels {spec!r}: group '{name}' given twice")
        if match.group(3) is None:
            groups[name] = _ints(match.group(2))
            continue
        outer, inner = _ints(match.group(2)), _ints(match.group(3))
        if not set(inner) < set(outer):
            raise InputError(f"--labels {spec!r}: a wall's inner labels {inner} must be some of its outer labels "
                             f"{outer} (the outer object encloses the inner one)")
        groups[name] = Wall(tuple(outer), tuple(inner))
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


def wall_thickness(label_image: sitk.Image, wall: Wall) -> float:
    """Mean distance from the outer surface of ``wall`` to its inner object, slice by slice.

    In each slice (the last axis: EMIDEC's short-axis stacks have few, thick slices, so distances
    across slices would mean little) that holds both objects, the outer object's contour pixels
    (``LabelContour``) are looked up in the inner object's Euclidean distance map (Maurer, in the
    image's spacing; pixel units for an identity affine); the result is the mean over all those
    contour pixels. A ring of radii r < R gives about R - r.

    Returns:
        The mean thickness, or NaN when no slice holds both objects.
    """
    values = sitk.GetArrayViewFromImage(label_image)  # [Z, Y, X]
    outer = np.isin(values, np.asarray(wall.outer)).astype(np.uint8)
    inner = np.isin(values, np.asarray(wall.inner)).astype(np.uint8)
    spacing = label_image.GetSpacing()[:2]
    distances = []
    for k in range(values.shape[0]):
        if not outer[k].any() or not inner[k].any():
            continue
        inner_slice = sitk.GetImageFromArray(inner[k])
        outer_slice = sitk.GetImageFromArray(outer[k])
        inner_slice.SetSpacing(spacing)
        outer_slice.SetSpacing(spacing)
        # distance of every pixel to the inner object's boundary (positive outside it)
        distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            inner_slice, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        contour = sitk.GetArrayFromImage(sitk.LabelContour(outer_slice, fullyConnected=False)) > 0
        distances.append(distance[contour])
    if not distances:
        return math.nan
    return float(np.concatenate(distances).mean())


def label_map_statistics(label_image: sitk.Image, groups: Mapping[str, Sequence[int] | Wall]) -> dict[str, float]:
    """``{"<group>_<stat>": value}`` for every group of one label image; ``<wall>_thickness`` for a wall."""
    row: dict[str, float] = {}
    for name, labels in groups.items():
        if isinstance(labels, Wall):
            row[f"{name}_thickness"] = wall_thickness(label_image, labels)
            continue
        row.update({f"{name}_{stat}": value for stat, value in shape_statistics(label_image, labels).items()})
    return row


def compute_attributes(manifest_df: pd.DataFrame, groups: Mapping[str, Sequence[int] | Wall],
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
