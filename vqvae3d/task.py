"""The VQ-VAE training task: loss, per-volume validation figures and per-epoch codebook statistics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlatent import distributed as dist_utils
from medlatent.engine import Task
from medlatent.metrics import reconstruction_metrics
from medlatent.precision import full_precision
from medlatent.vqvae3d.model import VQVAE3d, reconstruction_loss
from medlatent.vqvae3d.quantizer import codes_used_fraction, perplexity

__all__ = ["VQVAETask", "codebook_statistics"]

LEVEL_NAMES = {1: ("",), 2: ("_top", "_bottom")}


def codebook_statistics(model: VQVAE3d) -> dict[str, float]:
    """Perplexity and fraction of codes used from the usage tallied since ``reset_usage``.

    Flat model: ``{"perplexity", "codes_used_frac"}``. Two levels: the same keys averaged
    over levels, plus ``perplexity_top``/``_bottom`` and ``codes_used_frac_top``/``_bottom``.
    """
    stats: dict[str, float] = {}
    names = LEVEL_NAMES[model.levels]
    for name, vq in zip(names, model.quantizers):
        stats[f"perplexity{name}"] = perplexity(vq.usage)
        stats[f"codes_used_frac{name}"] = codes_used_fraction(vq.usage)
    if model.levels > 1:
        stats["perplexity"] = sum(stats[f"perplexity{n}"] for n in names) / len(names)
        stats["codes_used_frac"] = sum(stats[f"codes_used_frac{n}"] for n in names) / len(names)
    return stats


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A MetaTensor as a plain tensor: no metadata tracking inside the model or DDP."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class VQVAETask(Task):
    """Reconstruction loss (``mse`` or ``l1``) plus the quantizers' commitment loss.

    Args:
        model: the VQ-VAE.
        recon: ``"mse"`` or ``"l1"``.
        data_range: intensity range for PSNR/SSIM (1.0 for percentile-scaled volumes; None:
            each batch's range).
    """

    curve_metrics = ("loss", "mae", "psnr", "ssim", "perplexity", "codes_used_frac")

    def __init__(self, model: VQVAE3d, recon: str = "mse", data_range: float | None = 1.0) -> None:
        self.model = model
        self.recon = recon
        self.data_range = data_range
        reconstruction_loss(torch.zeros(1, 1), torch.zeros(1, 1), recon)  # reject a bad name now

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x = _plain(batch["image"])
        reconstruction, q_loss, _ = model(x)
        recon_loss = reconstruction_loss(reconstruction.float(), x.float(), self.recon).mean()
        loss = recon_loss + q_loss
        return loss, {"loss": loss.item(), "recon_loss": recon_loss.item(), "quant_loss": q_loss.item()}

    def validation_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = _plain(batch["image"])
        reconstruction, q_loss, _ = model(x)
        reconstruction, x = reconstruction.float(), x.float()
        recon_loss = reconstruction_loss(reconstruction, x, self.recon)
        with full_precision(x):  # metrics in fp32 under autocast
            figures = reconstruction_metrics(reconstruction, x, self.data_range)
        # the commitment term is the batch's (one number), added so that val_loss has the
        # training loss's terms; a per-volume commitment would cost a second encoder pass
        return {"loss": (recon_loss + q_loss.float()).cpu(), **figures}

    def epoch_start(self, stage: str) -> None:
        for vq in self.model.quantizers:
            vq.reset_usage()

    def epoch_end(self, stage: str) -> dict[str, float]:
        if stage == "train":
            # every rank tallied its own shard: sum the tallies (validation runs on rank 0 only)
            for vq in self.model.quantizers:
                # on the codebook's device: nccl reduces CUDA tensors only
                vq.usage = dist_utils.all_reduce_sum(vq.usage.to(vq.codebook.device)).cpu()
        return codebook_statistics(self.model)

    def preview(self, model: nn.Module, batch: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
        x = _plain(batch["image"][:1])
        reconstruction, _, _ = model(x)
        return [("original", x[0]), ("reconstruction", reconstruction[0])]
