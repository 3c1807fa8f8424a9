"""Reconstruction metrics per volume (MAE, MSE, PSNR, SSIM) from MONAI's metric classes."""

from __future__ import annotations

import torch
from monai.metrics import PSNRMetric, SSIMMetric

__all__ = ["reconstruction_metrics", "RECONSTRUCTION_KEYS"]

RECONSTRUCTION_KEYS = ("mae", "mse", "psnr", "ssim")


def reconstruction_metrics(prediction: torch.Tensor, target: torch.Tensor, data_range: float | None = None) -> dict[str, torch.Tensor]:
    """Per-volume reconstruction figures.

    Args:
        prediction: ``[B, C, D, H, W]`` reconstruction.
        target: ``[B, C, D, H, W]`` original, same shape.
        data_range: intensity range for PSNR and SSIM; default the target batch's
            ``max - min`` (1.0 for percentile-scaled volumes).

    Returns:
        ``{"mae", "mse", "psnr", "ssim"}`` each a float tensor of shape ``[B]`` on the CPU.
    """
    prediction = prediction.detach().float().cpu()
    target = target.detach().float().cpu()
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    if data_range is None:
        data_range = float(target.max() - target.min()) or 1.0
    difference = prediction - target
    mae = difference.abs().flatten(1).mean(1)
    mse = difference.pow(2).flatten(1).mean(1)
    psnr = PSNRMetric(max_val=data_range, reduction="none")(prediction, target).flatten()
    # the Gaussian window must fit in the smallest axis
    win = min(7, min(target.shape[2:]) // 2 * 2 - 1)
    ssim = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=win, reduction="none")(prediction, target).flatten()
    return {"mae": mae, "mse": mse, "psnr": psnr, "ssim": ssim}
