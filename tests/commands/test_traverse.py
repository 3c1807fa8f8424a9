"""``medlatent traverse`` and ``interpolate``: decoded steps in the scan's geometry."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.commands.traverse import interpolate, traverse


@pytest.mark.parametrize("scan", ["ixi_t1", "ct_pitch"], ids=["ixi_PSR", "ct_oblique"])
def test_traversal_steps_keep_the_input_geometry(trained_run, tmp_path, scan, request):
    scan = request.getfixturevalue(scan)
    out = traverse(trained_run, scan, "cavity_volume_mm3", steps=3, value_range=(-2, 2), out=tmp_path / "t")
    reference = nib.load(scan)
    for i in range(3):
        step = nib.load(out / f"step_{i:02d}.nii.gz")
        assert step.shape == reference.shape
        assert np.allclose(step.affine, reference.affine, atol=1e-4)
        data = step.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    steps = pd.read_csv(out / "steps.csv")
    assert steps["z"].tolist() == [-2, 0, 2]
    assert steps["cavity_volume_mm3"].notna().all()
    # step labels never leave the training range (no negative volume at the ends of the axis)
    from medlatent.attrivae.attributes import AttributeMap

    amap = AttributeMap.load(trained_run)
    column = amap.names.index("cavity_volume_mm3")
    assert steps["cavity_volume_mm3"].between(amap.minimum[column], amap.maximum[column]).all()
    assert (out / "grid.png").stat().st_size > 0


def test_traversal_along_cavity_changes_the_decoded_volume(trained_run, phantom_manifest, tmp_path):
    image = pd.read_csv(phantom_manifest)["image"][0]
    out = traverse(trained_run, phantom_manifest.parent / image, "cavity_volume_mm3", steps=2,
                       value_range=(-3, 3), out=tmp_path / "t")
    first, last = (nib.load(out / f"step_{i:02d}.nii.gz").get_fdata() for i in (0, 1))
    assert np.abs(first - last).mean() > 1e-3


def test_interpolation_is_written_in_input_a_geometry(trained_run, phantom_manifest, tmp_path):
    images = [phantom_manifest.parent / p for p in pd.read_csv(phantom_manifest)["image"][:2]]
    out = interpolate(trained_run, images[0], images[1], steps=3, out=tmp_path / "i")
    reference = nib.load(images[0])
    step = nib.load(out / "step_01.nii.gz")
    assert step.shape == reference.shape and np.allclose(step.affine, reference.affine, atol=1e-4)
