"""transforms.attributes: label groups and SimpleITK shape statistics, checked against DLMUSE volumes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from medlatent.errors import InputError
from medlatent.transforms.attributes import (STATISTICS, Wall, compute_attributes, parse_label_groups, shape_statistics,
                                             wall_thickness)
from medlatent.transforms.manifest import build_manifest


def test_parse_label_groups() -> None:
    assert parse_label_groups(["ventricles=51,52", "hippo = 47, 48", "third=4"]) == {
        "ventricles": [51, 52], "hippo": [47, 48], "third": [4]}
    for bad in ("ventricles", "v=51;52", "=4", "v=a", "1v=3"):
        with pytest.raises(InputError, match=re.escape(bad)):
            parse_label_groups([bad])
    with pytest.raises(InputError, match="given twice"):
        parse_label_groups(["a=1", "a=2"])


def test_reproduces_dlmuse_volumes(ixi_dir: Path) -> None:
    df = build_manifest(str(ixi_dir / "T1" / "IXI01[2-6]*.nii.gz"), str(ixi_dir / "dlmuse_seg" / "*.nii.gz"))
    df["subject"] = df["subject"].str.replace("_T1", "")
    assert len(df) >= 4
    attrs = compute_attributes(df, {"ventricles": [51, 52], "hippocampus": [47, 48]})
    assert list(attrs.columns) == ["subject"] + [f"{g}_{s}" for g in ("ventricles", "hippocampus") for s in STATISTICS]
    roi = pd.read_csv(ixi_dir / "dlmuse_roi_volumes.csv", dtype={"MRID": str}).set_index("MRID")
    for _, row in attrs.iterrows():
        ref = roi.loc[row["subject"]]
        assert row["ventricles_volume_mm3"] == pytest.approx(ref["51"] + ref["52"], rel=0.005)
        assert row["hippocampus_volume_mm3"] == pytest.approx(ref["47"] + ref["48"], rel=0.005)
        assert row["ventricles_feret_diameter_mm"] > 2 * row["ventricles_equivalent_spherical_radius_mm"]
        assert 0 < row["hippocampus_roundness"] < 1


def test_sphere_statistics_and_empty_group() -> None:
    grid = np.indices((40, 40, 40)) - 19.5
    ball = (np.sqrt((grid**2).sum(0)) < 10).astype(np.uint8) * 7
    image = sitk.GetImageFromArray(ball)
    image.SetSpacing((2.0, 2.0, 2.0))
    stats = shape_statistics(image, [7])
    assert stats["volume_mm3"] == pytest.approx(4 / 3 * math.pi * 20**3, rel=0.03)
    assert stats["equivalent_spherical_radius_mm"] == pytest.approx(20, rel=0.02)
    assert stats["elongation"] == pytest.approx(1, abs=0.02) and stats["flatness"] == pytest.approx(1, abs=0.02)
    empty = shape_statistics(image, [3])
    assert empty["volume_mm3"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "volume_mm3")


def test_compute_attributes_names_bad_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"subject": ["a"], "image": ["x"], "mask": [str(tmp_path / "nope.nii.gz")]})
    with pytest.raises(InputError, match="row 2 .*nope.nii.gz"):
        compute_attributes(df, {"v": [1]})


def test_parse_walls() -> None:
    assert parse_label_groups(["wall=1,2,3,4:1", "cavity=1"]) == {"wall": Wall((1, 2, 3, 4), (1,)), "cavity": [1]}
    for bad in ("wall=1:2", "wall=1,2:", "wall=:1"):
        with pytest.raises(InputError, match=re.escape(bad)):
            parse_label_groups([bad])


def _annulus(inner: float, outer: float, slices: int = 4, size: int = 96) -> sitk.Image:
    """Label map ``[slices, size, size]``: 1 inside radius ``inner``, 2 out to ``outer``, per slice."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2 + 0.3, xx - size / 2 + 0.1)
    ring = np.where(radius < inner, 1, np.where(radius < outer, 2, 0)).astype(np.uint8)
    return sitk.GetImageFromArray(np.stack([ring] * slices))


@pytest.mark.parametrize("inner, outer", [(10, 16), (20, 24), (15, 30)])
def test_wall_thickness_of_an_annulus(inner: float, outer: float) -> None:
    thickness = wall_thickness(_annulus(inner, outer), Wall((1, 2), (1,)))
    assert thickness == pytest.approx(outer - inner, abs=0.6)  # pixel contours: half a pixel either way


def test_wall_thickness_uses_spacing_and_skips_slices_without_both() -> None:
    image = _annulus(10, 16)
    array = sitk.GetArrayFromImage(image)
    array[0][array[0] == 1] = 2  # an apical slice: myocardium without cavity
    array[1] = 0  # a slice without the heart
    scaled = sitk.GetImageFromArray(array)
    scaled.SetSpacing((2.0, 2.0, 10.0))
    assert wall_thickness(scaled, Wall((1, 2), (1,))) == pytest.approx(12.0, abs=1.2)
    assert math.isnan(wall_thickness(sitk.GetImageFromArray(array[:2]), Wall((1, 2), (1,))))


def test_emidec_volumes_match_the_clinical_table_and_walls_are_plausible(emidec_dir: Path) -> None:
    cases = ["Case_N006", "Case_N012", "Case_P001", "Case_P002"]
    df = pd.DataFrame({"subject": cases, "mask": [str(emidec_dir / "labels" / f"{c}.nii.gz") for c in cases]})
    groups = parse_label_groups(["cavity=1", "myocardium=2,3,4", "infarct=3,4", "wall=1,2,3,4:1"])
    attrs = compute_attributes(df, groups).set_index("subject")
    clinical = pd.read_csv(emidec_dir / "clinical.csv").set_index("subject").loc[cases]
    # identity affine: volumes are voxel counts; the table's infarct_voxels is label 3 alone, our
    # infarct group also holds the no-reflow core (label 4) inside the infarct
    clinical["infarct_and_noreflow"] = clinical["infarct_voxels"] + clinical["noreflow_voxels"]
    for ours, theirs in (("cavity", "cavity_voxels"), ("myocardium", "myocardium_voxels"),
                         ("infarct", "infarct_and_noreflow")):
        assert (attrs[f"{ours}_volume_mm3"] == clinical[theirs]).all()
    assert attrs["wall_thickness"].between(3, 20).all()
