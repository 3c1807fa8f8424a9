"""Per-subject latent features of a VQ-VAE: pooled pre/post-quantization features and code-usage summaries."""

from __future__ import annotations

import numpy as np
import torch

from medlatent.vqvae3d.model import VQVAE3d
from medlatent.vqvae3d.quantizer import perplexity

__all__ = ["volume_features", "level_names"]


def level_names(model: VQVAE3d) -> list[str]:
    """The names of the code grids, top first: ``["z"]`` or ``["top", "bottom"]``."""
    return ["z"] if model.levels == 1 else ["top", "bottom"]


@torch.no_grad()
def volume_features(model: VQVAE3d, x: torch.Tensor) -> tuple[dict[str, float], list[np.ndarray]]:
    """Features of one volume.

    Args:
        model: a VQ-VAE in eval mode.
        x: ``[1, 1, D, H, W]``.

    Returns:
        ``(features, grids)``. ``features`` per level L (``z``, or ``top``/``bottom``):
        ``pre_L_j``/``post_L_j`` (mean over the code grid of channel j of the features before
        and after quantization, j < E), ``codes_L_distinct`` (distinct codes in the grid),
        ``codes_L_perplexity`` and ``codes_L_top_frac`` (share of the grid taken by the most
        frequent code). ``grids`` are the ``[d, h, w]`` int64 code grids, top first.
    """
    features: dict[str, float] = {}
    grids: list[np.ndarray] = []
    pre = model.encode(x)
    for name, z, vq in zip(level_names(model), pre, model.quantizers):
        q, idx = vq.codes_for(z)
        for prefix, tensor in (("pre", z), ("post", q)):
            pooled = tensor.float().mean(dim=(2, 3, 4))[0]  # [E]
            features.update({f"{prefix}_{name}_{j}": float(v) for j, v in enumerate(pooled)})
        counts = torch.bincount(idx.flatten(), minlength=vq.num_codes)
        features[f"codes_{name}_distinct"] = int((counts > 0).sum())
        features[f"codes_{name}_perplexity"] = perplexity(counts)
        features[f"codes_{name}_top_frac"] = float(counts.max() / counts.sum())
        grids.append(idx[0].cpu().numpy())
    return features, grids
