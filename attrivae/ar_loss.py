"""Attribute-regularisation (AR) loss of Pati & Lerch (AR-VAE, 2020): latent dim k must order a batch as attribute k does."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["attribute_regularization", "ar_loss"]


def attribute_regularization(z_k: torch.Tensor, a_k: torch.Tensor, delta: float = 10.0) -> torch.Tensor:
    """Per-item AR loss of one attribute.

    With ``D_z[i, j] = z_k[i] - z_k[j]`` and ``D_a[i, j] = a_k[i] - a_k[j]`` the AR-VAE loss is
    ``mean_ij |tanh(delta * D_z) - sign(D_a)|``. This returns the row means, so that
    ``.mean()`` is exactly that batch loss and the validation step can report it per volume.

    Args:
        z_k: ``[B]`` the regularised latent dimension.
        a_k: ``[B]`` the attribute (any monotone scaling gives the same loss).
        delta: steepness of the tanh; large values make the loss a hinge on the ordering.

    Returns:
        ``[B]`` non-negative; zero for a batch that ``z_k`` orders exactly as ``a_k`` when
        ``delta`` is large (the diagonal contributes ``|tanh 0 - sign 0| = 0``).
    """
    d_z = z_k[:, None] - z_k[None, :]  # [B, B]
    d_a = a_k[:, None] - a_k[None, :]  # [B, B]
    return (torch.tanh(delta * d_z) - torch.sign(d_a).to(d_z.dtype)).abs().mean(dim=1)


def ar_loss(z: torch.Tensor, attributes: torch.Tensor, dims: Sequence[int], delta: float = 10.0) -> torch.Tensor:
    """AR loss summed over the regularised attributes, per item.

    Args:
        z: ``[B, L]`` latent codes.
        attributes: ``[B, A]`` attribute values, column ``i`` tied to latent dim ``dims[i]``.
        dims: ``A`` latent dimensions, one per attribute column (AR-VAE sums the attributes' losses).
        delta: tanh steepness.

    Returns:
        ``[B]``; zeros when ``dims`` is empty.
    """
    total = z.new_zeros(z.shape[0])
    for column, dim in enumerate(dims):
        total = total + attribute_regularization(z[:, dim], attributes[:, column].to(z.dtype), delta)
    return total
