"""Latent manipulation: move one attribute's dimension, or walk the line between two subjects, and decode."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from medlatent.attrivae.model import AttriVAE

__all__ = ["traverse_latents", "interpolate_latents", "decode_latents", "fit_calibration"]


def traverse_latents(mu: torch.Tensor, dim: int, values: torch.Tensor) -> torch.Tensor:
    """Copies of ``mu [L]`` with dimension ``dim`` set to each of ``values [S]``: ``-> [S, L]``.

    The values are absolute positions on the latent axis (the prior is N(0, 1), so -3..3
    spans almost all of it), not offsets from the subject's own value.
    """
    z = mu.detach().reshape(1, -1).repeat(len(values), 1)
    z[:, dim] = values.to(z)
    return z


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` points on the segment from ``z_a [L]`` to ``z_b [L]``, both ends included: ``-> [steps, L]``."""
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    return (1 - t) * z_a.reshape(1, -1) + t * z_b.reshape(1, -1)


@torch.no_grad()
def decode_latents(model: AttriVAE, z: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Decode ``[S, L]`` latents in small batches (memory stays bounded): ``-> [S, 1, D, H, W]`` on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.decode(chunk.to(device)).cpu() for chunk in z.split(batch_size)])


def fit_calibration(latent: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """A 1-D linear fit ``attribute ~ slope * z_k + intercept`` to label traversal steps in attribute units.

    It is the same fit the interpretability metric scores, so its ``r2`` says how far the
    labels can be trusted. Returns ``{"slope", "intercept", "r2", "n"}`` (NaN with fewer than 2 points).
    """
    latent = np.asarray(latent, dtype=np.float64).reshape(-1, 1)
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(latent) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan"), "n": int(len(values))}
    fit = LinearRegression().fit(latent, values)
    return {"slope": float(fit.coef_[0]), "intercept": float(fit.intercept_), "r2": float(fit.score(latent, values)),
            "n": int(len(values))}
