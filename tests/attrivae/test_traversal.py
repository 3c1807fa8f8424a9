import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medlatent.attrivae.family import cmd_interpolate, cmd_traverse
from medlatent.attrivae.traversal import fit_calibration, interpolate_latents, traverse_latents

from .conftest import CT_PITCH, IXI_T1


def test_traverse_moves_only_the_chosen_dim():
    mu = torch.arange(5.0)
    z = traverse_latents(mu, 2, torch.tensor([-1.0, 0.0, 3.0]))
    assert z.shape == (3, 5) and z[:, 2].tolist() == [-1.0, 0.0, 3.0]
    assert torch.equal(z[:, [0, 1, 3, 4]], mu[[0, 1, 3, 4]].expand(3, 4))


def test_interpolation_hits_both_ends():
    a, b = torch.zeros(4), torch.ones(4)
    z = interpolate_latents(a, b, 5)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b) and torch.allclose(z[2], torch.full((4,), 0.5))


def test_calibration_recovers_a_linear_map():
    z = np.linspace(-2, 2, 20)
    fit = fit_calibration(z, 3 * z + 7)
    assert fit["slope"] == pytest.approx(3) and fit["intercept"] == pytest.approx(7) and fit["r2"] == pytest.approx(1)


@pytest.mark.parametrize("scan", [IXI_T1, CT_PITCH], ids=["ixi_PSR", "ct_oblique"])
def test_traversal_steps_keep_the_input_geometry(trained_run, tmp_path, scan):
    if not scan.is_file():
        pytest.fail(f"real data missing: {scan}")
    out = cmd_traverse(trained_run, scan, "cavity_volume_mm3", steps=3, value_range=(-2, 2), out=tmp_path / "t")
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
    assert (out / "grid.png").stat().st_size > 0


def test_traversal_along_cavity_changes_the_decoded_volume(trained_run, phantom_manifest, tmp_path):
    image = pd.read_csv(phantom_manifest)["image"][0]
    out = cmd_traverse(trained_run, phantom_manifest.parent / image, "cavity_volume_mm3", steps=2,
                       value_range=(-3, 3), out=tmp_path / "t")
    first, last = (nib.load(out / f"step_{i:02d}.nii.gz").get_fdata() for i in (0, 1))
    assert np.abs(first - last).mean() > 1e-3


def test_interpolation_is_written_in_input_a_geometry(trained_run, phantom_manifest, tmp_path):
    images = [phantom_manifest.parent / p for p in pd.read_csv(phantom_manifest)["image"][:2]]
    out = cmd_interpolate(trained_run, images[0], images[1], steps=3, out=tmp_path / "i")
    reference = nib.load(images[0])
    step = nib.load(out / "step_01.nii.gz")
    assert step.shape == reference.shape and np.allclose(step.affine, reference.affine, atol=1e-4)
