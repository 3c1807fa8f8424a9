"""The Attri-VAE objective: reconstruction + beta * KL + gamma * AR + alpha * classification, per volume."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from medlatent.attrivae.ar_loss import ar_loss

__all__ = ["reconstruction_loss", "kl_divergence", "classification_loss", "attrivae_loss"]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the voxels of each volume: ``[B, C, D, H, W] x 2 -> [B]``."""
    return (recon.float() - target.float()).pow(2).flatten(1).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dims: ``[B, L] x 2 -> [B]``."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-volume BCE (one logit) or cross-entropy (one logit per class): ``[B, K], [B] -> [B]``."""
    labels = labels.view(-1)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), labels.float(), reduction="none")
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def attrivae_loss(out: Mapping[str, torch.Tensor], target: torch.Tensor, attributes: torch.Tensor | None,
                  labels: torch.Tensor | None, dims: Sequence[int], beta: float, gamma: float, delta: float,
                  alpha: float) -> dict[str, torch.Tensor]:
    """Every term of the objective per volume.

    Args:
        out: ``AttriVAE.forward`` output (``recon``, ``mu``, ``logvar``, ``z``, ``logits``?).
        target: ``[B, 1, D, H, W]`` input volumes.
        attributes: ``[B, A]`` min-max scaled regularised attributes (column ``i`` -> ``dims[i]``), or None.
        labels: ``[B]`` class indices, or None (no classification term).
        dims: latent dimension of each attribute column.
        beta, gamma, delta, alpha: weights of KL, AR, the AR tanh steepness, classification.

    Returns:
        ``{"loss", "recon", "kl", "ar", "cls"}``, each ``[B]`` (unweighted terms, weighted ``loss``).
    """
    recon = reconstruction_loss(out["recon"], target)
    kl = kl_divergence(out["mu"].float(), out["logvar"].float())
    z = out["z"].float()
    if attributes is not None and len(dims):
        ar = ar_loss(z, attributes.float(), dims, delta)
    else:
        ar = torch.zeros_like(recon)
    if labels is not None and "logits" in out:
        cls = classification_loss(out["logits"], labels)
    else:
        cls = torch.zeros_like(recon)
    loss = recon + beta * kl + gamma * ar + alpha * cls
    return {"loss": loss, "recon": recon, "kl": kl, "ar": ar, "cls": cls}
