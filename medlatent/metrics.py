"""Reconstruction metrics per volume (MAE, MSE, PSNR from MONAI; SSIM by scipy's separable Gaussian filter).

SSIM is the standard setting of Wang et al. (2004), as scikit-image's ``structural_similarity``
(``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``) and MONAI's ``SSIMMetric``
defaults have it: an 11-voxel Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over
the positions where the whole window fits. The local means and (co)variances come from
``scipy.ndimage.gaussian_filter`` (separable: 3 x 11 taps per voxel), in float64; MONAI's
``SSIMMetric`` gives the same figure (to 1e-6) with a dense 11^3 convolution that takes 10-15x
longer on a CPU, where the metrics are computed.

A volume smaller than 11 voxels along an axis cannot hold that window: the window then shrinks
to the largest odd size that fits (same sigma, so the Gaussian is cut off sooner), and the figure
is no longer the standard SSIM (:func:`ssim_window` says which window a shape gets). The models
here run at 32^3 and more, where the standard window always fits.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import PSNRMetric
from scipy.ndimage import gaussian_filter

__all__ = ["reconstruction_metrics", "ssim", "ssim_window", "RECONSTRUCTION_KEYS", "SSIM_WINDOW", "SSIM_SIGMA"]

RECONSTRUCTION_KEYS = ("mae", "mse", "psnr", "ssim")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)


def ssim_window(spatial_shape: tuple[int, ...]) -> int:
    """The SSIM window for volumes of ``spatial_shape``: 11, or the largest odd size that fits a smaller axis."""
    smallest = min(int(s) for s in spatial_shape)
    if smallest < 3:
        raise ValueError(f"SSIM needs at least 3 voxels along every axis, got shape {tuple(spatial_shape)}")
    return min(SSIM_WINDOW, smallest if smallest % 2 else smallest - 1)


def _ranges(target: torch.Tensor, data_range: float | None) -> list[float]:
    """One intensity range per volume: ``data_range`` if given, else the volume's own max - min (1 if constant)."""
    if data_range is not None:
        return [float(data_range)] * target.shape[0]
    flat = target.flatten(1)
    return [float(r) or 1.0 for r in (flat.amax(1) - flat.amin(1))]


def _ssim_volume(x: np.ndarray, y: np.ndarray, value_range: float, win: int) -> float:
    """SSIM of two ``[C, D, H, W]`` float64 arrays: the mean over channels and window positions."""
    radius = win // 2
    pad = (slice(None),) + (slice(radius, -radius),) * 3
    c1, c2 = (SSIM_K[0] * value_range) ** 2, (SSIM_K[1] * value_range) ** 2
    channels = []
    for a, b in zip(x, y):
        def local_mean(v: np.ndarray) -> np.ndarray:
            # truncate so the kernel has exactly `win` taps (radius = int(truncate * sigma + 0.5))
            return gaussian_filter(v, SSIM_SIGMA, truncate=radius / SSIM_SIGMA, mode="reflect")

        mu_a, mu_b = local_mean(a), local_mean(b)
        var_a = local_mean(a * a) - mu_a * mu_a
        var_b = local_mean(b * b) - mu_b * mu_b
        cov = local_mean(a * b) - mu_a * mu_b
        channels.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.stack(channels)[pad].mean())


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Per-volume SSIM (the standard 11-voxel Gaussian window where it fits; see the module docstring).

    Args:
        prediction: ``[B, C, D, H, W]``.
        target: ``[B, C, D, H, W]``, same shape.
        data_range: intensity range L in the SSIM constants (K L)^2; default each target volume's max - min.

    Returns:
        ``[B]`` float tensor.
    """
    win = ssim_window(tuple(target.shape[2:]))
    x = prediction.detach().cpu().double().numpy()
    y = target.detach().cpu().double().numpy()
    values = [_ssim_volume(x[i], y[i], r, win) for i, r in enumerate(_ranges(target, data_range))]
    return torch.tensor(values, dtype=torch.float32)


def reconstruction_metrics(prediction: torch.Tensor, target: torch.Tensor, data_range: float | None = None) -> dict[str, torch.Tensor]:
    """Per-volume reconstruction figures.

    Args:
        prediction: ``[B, C, D, H, W]`` reconstruction.
        target: ``[B, C, D, H, W]`` original, same shape.
        data_range: intensity range for PSNR and SSIM; default each target volume's own
            ``max - min`` (1.0 for percentile-scaled volumes), so a volume's figures do not
            depend on the batch it came in.

    Returns:
        ``{"mae", "mse", "psnr", "ssim"}`` each a float tensor of shape ``[B]`` on the CPU.
    """
    prediction = prediction.detach().float().cpu()
    target = target.detach().float().cpu()
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    difference = prediction - target
    mae = difference.abs().flatten(1).mean(1)
    mse = difference.pow(2).flatten(1).mean(1)
    psnr = torch.cat([PSNRMetric(max_val=r, reduction="none")(prediction[i:i + 1], target[i:i + 1]).flatten()
                      for i, r in enumerate(_ranges(target, data_range))]) if len(target) else torch.zeros(0)
    return {"mae": mae, "mse": mse, "psnr": psnr, "ssim": ssim(prediction, target, data_range)}
