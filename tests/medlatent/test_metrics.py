"""medlatent.metrics: the standard 11-voxel SSIM, cross-checked against scikit-image on real IXI volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, shift
from skimage.metrics import structural_similarity

from medlatent.metrics import reconstruction_metrics, ssim, ssim_window


def _ixi(ixi_dir: Path, i: int) -> np.ndarray:
    path = sorted((ixi_dir / "T1").glob("*.nii.gz"))[i]
    volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return volume / np.percentile(volume, 99.5)


def _degrade(volume: np.ndarray, kind: str) -> np.ndarray:
    if kind == "noise":
        return volume + np.random.default_rng(0).normal(0, 0.05, volume.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_filter(volume, 1.0)
    return shift(volume, (1.5, 0.0, -1.0), order=1)  # a sub-voxel shift, linear interpolation


@pytest.mark.parametrize("subject", [0, 3])
@pytest.mark.parametrize("kind", ["noise", "blur", "shift"])
def test_ssim_agrees_with_scikit_image_on_ixi(ixi_dir: Path, subject: int, kind: str) -> None:
    target = _ixi(ixi_dir, subject)
    prediction = _degrade(target, kind)
    expected = structural_similarity(target, prediction, data_range=float(target.max() - target.min()),
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    got = float(ssim(torch.from_numpy(prediction)[None, None], torch.from_numpy(target)[None, None])[0])
    assert abs(got - expected) < 1e-4, (got, expected)
    assert got < 0.99  # the degradation is visible: the comparison is not between two 1.0s


def test_data_range_is_per_volume_so_the_batch_does_not_matter(ixi_dir: Path) -> None:
    a, b = _ixi(ixi_dir, 0), 40.0 * _ixi(ixi_dir, 1)  # two volumes with very different ranges
    targets = torch.from_numpy(np.stack([a, b]))[:, None]
    predictions = torch.from_numpy(np.stack([_degrade(a, "noise"), _degrade(b, "blur")]))[:, None]
    together = reconstruction_metrics(predictions, targets)
    for i in range(2):
        alone = reconstruction_metrics(predictions[i:i + 1], targets[i:i + 1])
        for key in ("ssim", "psnr"):
            assert float(together[key][i]) == pytest.approx(float(alone[key][0]), abs=1e-6), key


def test_window_is_standard_where_it_fits_and_shrinks_on_small_axes() -> None:
    assert ssim_window((32, 32, 32)) == 11 and ssim_window((11, 40, 40)) == 11
    assert ssim_window((8, 16, 16)) == 7 and ssim_window((9, 9, 9)) == 9
    small = torch.rand(2, 1, 8, 16, 16)
    values = ssim(small + 0.05 * torch.randn_like(small), small)
    assert values.shape == (2,) and torch.isfinite(values).all()
    with pytest.raises(ValueError, match="at least 3 voxels"):
        ssim(torch.rand(1, 1, 2, 8, 8), torch.rand(1, 1, 2, 8, 8))


def test_ssim_agrees_with_monai_ssim_metric() -> None:
    from monai.metrics import SSIMMetric

    torch.manual_seed(0)
    target = gaussian_filter(torch.rand(24, 24, 24).numpy(), 2.0)
    target = torch.from_numpy((target - target.min()) / (target.max() - target.min()))[None, None]
    prediction = target + 0.05 * torch.randn_like(target)
    value_range = float(target.max() - target.min())
    expected = SSIMMetric(spatial_dims=3, data_range=value_range, win_size=11, kernel_sigma=1.5)(prediction, target)
    # MONAI computes in float32 (variance as E[x^2] - mu^2), ours in float64: 1e-4 covers the rounding
    assert float(ssim(prediction, target)[0]) == pytest.approx(float(expected), abs=1e-4)
