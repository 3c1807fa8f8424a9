"""The 3D VQ-VAE: shared residual encoder, EMA vector quantizer(s), mirrored decoder; flat or two-level.

Flat (van den Oord et al. 2017)::

    x [B,1,D,H,W] -s2d-> [B,s^3,D/s,...] -Encoder3d-> z [B,E,D/2^k,...] -VQ-> q -Decoder3d-> -d2s-> x^

Two-level (VQ-VAE-2, Razavi et al. 2019): a top grid at 1/2^(k+1) and a bottom grid at 1/2^k
per axis. The bottom grid is conditioned on the top one: its pre-quantization features see
the bottom encoder's output *and* the decoded top codes, and the decoder reads both grids.

``s2d`` is a lossless space-to-depth reshape by ``space_to_depth`` per axis (2 by default):
the convolutions then run at half resolution on ``s^3`` input channels instead of at full
resolution, which is where a 3D conv net spends most of its CPU time; the decoder's last
convolution predicts ``s^3`` channels that are reshaped back (depth-to-space). The total
downsampling is still ``2^k`` per axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medlatent.blocks import Decoder3d, Encoder3d, depth_to_space, space_to_depth
from medlatent.vqvae3d.quantizer import EMAQuantizer

__all__ = ["VQVAE3d", "reconstruction_loss"]


class VQVAE3d(nn.Module):
    """VQ-VAE for single-channel 3D volumes.

    Args:
        in_channels: image channels (1).
        channels: encoder widths, one per stride-2 level of the shared ``Encoder3d``; the total
            downsampling is ``space_to_depth * 2^len(channels)`` (``2^k``).
        embedding_dim: code dimension E (encoder output channels).
        num_codes: codebook size, one int for every level or one per level (top first).
        num_res_units: residual units at the bottom of encoder and decoder.
        res_channels: hidden width of the residual units (default: the level width).
        decoder_channels: decoder widths from the bottom up (default ``channels`` reversed).
        decoder_final_channels: width of the decoder's last level, at the resolution the
            space-to-depth output has (default: the last decoder width); see ``Decoder3d``.
        space_to_depth: lossless reshape factor before the encoder (1 disables it).
        levels: 1 (flat) or 2 (VQ-VAE-2 top/bottom).
        top_channels: width of the top encoder/decoder of the two-level model.
        norm: normalisation in the shared blocks.
        decay, commitment, dead_threshold, kmeans_iters, eps: see ``EMAQuantizer``.
        channels_last: run convolutions in ``channels_last_3d`` memory format (faster on CPU).
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (64,), embedding_dim: int = 32,
                 num_codes: int | Sequence[int] = 256, num_res_units: int = 2, res_channels: int | None = None,
                 decoder_channels: Sequence[int] | None = None, decoder_final_channels: int | None = None,
                 space_to_depth: int = 2, levels: int = 1,
                 top_channels: int | None = None, norm: str = "none", decay: float = 0.99, commitment: float = 0.25,
                 dead_threshold: float = 1.0, kmeans_iters: int = 10, eps: float = 1e-5,
                 channels_last: bool = True) -> None:
        super().__init__()
        if levels not in (1, 2):
            raise ValueError(f"levels must be 1 or 2, got {levels}")
        if space_to_depth < 1 or space_to_depth & (space_to_depth - 1):
            raise ValueError(f"space_to_depth must be a power of two, got {space_to_depth}")
        channels = list(channels)
        codes = [int(num_codes)] * levels if isinstance(num_codes, int) else [int(n) for n in num_codes]
        if len(codes) != levels:
            raise ValueError(f"num_codes needs one entry per level ({levels}), got {codes}")
        self.in_channels, self.levels, self.s2d = in_channels, levels, int(space_to_depth)
        self.num_codes: list[int] = codes
        self.embedding_dim = embedding_dim
        self.channels_last = channels_last
        # total downsampling of the (bottom) grid, and of the top grid for two levels
        self.downsampling = self.s2d * 2 ** len(channels)
        self.grid_factor = self.downsampling * (2 if levels == 2 else 1)
        wide = in_channels * self.s2d**3
        decoder_channels = list(decoder_channels) if decoder_channels else channels[::-1]
        vq = dict(decay=decay, commitment=commitment, dead_threshold=dead_threshold, kmeans_iters=kmeans_iters, eps=eps)
        if levels == 1:
            self.encoder = Encoder3d(wide, channels, embedding_dim, num_res_units, res_channels, norm)
            self.quantizers = nn.ModuleList([EMAQuantizer(codes[0], embedding_dim, **vq)])
            self.decoder = Decoder3d(embedding_dim, decoder_channels, wide, num_res_units, res_channels, norm,
                                     decoder_final_channels)
        else:
            top = top_channels or channels[-1]
            bottom = channels[-1]
            # bottom encoder stops at the feature map; the top encoder goes one level further
            self.encoder = Encoder3d(wide, channels, bottom, num_res_units, res_channels, norm)
            self.encoder_top = Encoder3d(bottom, [top], embedding_dim, num_res_units, res_channels, norm)
            # decodes the top codes to the bottom grid: the conditioning of the bottom level
            self.decoder_top = Decoder3d(embedding_dim, [top], embedding_dim, num_res_units, res_channels, norm)
            self.pre_bottom = nn.Conv3d(bottom + embedding_dim, embedding_dim, kernel_size=1)
            self.upsample_top = nn.ConvTranspose3d(embedding_dim, embedding_dim, kernel_size=4, stride=2, padding=1)
            self.quantizers = nn.ModuleList([EMAQuantizer(n, embedding_dim, **vq) for n in codes])
            self.decoder = Decoder3d(2 * embedding_dim, decoder_channels, wide, num_res_units, res_channels, norm,
                                     decoder_final_channels)
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    # --- helpers -------------------------------------------------------------------------
    def check_shape(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``[B, in_channels, D, H, W]`` with sizes divisible by the grid factor."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        if any(s % self.grid_factor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.grid_factor}")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        self.check_shape(x)
        x = space_to_depth(x, self.s2d)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _bottom_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._prepare(x))

    # --- the four stages ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pre-quantization features, one per level, top first.

        Args:
            x: ``[B, 1, D, H, W]``.

        Returns:
            flat: ``[z [B, E, D/2^k, H/2^k, W/2^k]]``; two-level: ``[z_top [B, E, D/2^(k+1), ...],
            z_bottom [B, E, D/2^k, ...]]`` (the bottom computed from the quantized top, no
            codebook update or usage count for that inner lookup).
        """
        h = self._bottom_features(x)
        if self.levels == 1:
            return [h]
        z_top = self.encoder_top(h)
        q_top, _ = self.quantizers[0].codes_for(z_top)
        return [z_top, self.pre_bottom(torch.cat([h, self.decoder_top(q_top)], dim=1))]

    def quantize(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Quantize each level's features: ``(quantized [B,E,...] per level, indices [B,d,h,w] per level, loss)``."""
        quantized, indices, loss = [], [], torch.zeros((), device=features[0].device)
        for z, vq in zip(features, self.quantizers):
            q, idx, level_loss = vq(z)
            quantized.append(q)
            indices.append(idx)
            loss = loss + level_loss
        return quantized, indices, loss

    def decode(self, quantized: Sequence[torch.Tensor]) -> torch.Tensor:
        """Quantized features (top first) -> reconstruction ``[B, 1, D, H, W]``."""
        if self.levels == 1:
            z = quantized[0]
        else:
            z = torch.cat([self.upsample_top(quantized[0]), quantized[1]], dim=1)
        out = depth_to_space(self.decoder(z), self.s2d)
        # back to the default layout, so losses and metrics see an ordinary tensor
        return out.contiguous()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``x [B,1,D,H,W] -> (reconstruction [B,1,D,H,W], quantizer loss [], indices per level)``.

        The two-level path quantizes the top once, with the codebook update and usage count
        of training, and conditions the bottom on it.
        """
        h = self._bottom_features(x)
        if self.levels == 1:
            quantized, indices, loss = self.quantize([h])
            return self.decode(quantized), loss, indices
        z_top = self.encoder_top(h)
        q_top, i_top, loss_top = self.quantizers[0](z_top)
        z_bottom = self.pre_bottom(torch.cat([h, self.decoder_top(q_top)], dim=1))
        q_bottom, i_bottom, loss_bottom = self.quantizers[1](z_bottom)
        return self.decode([q_top, q_bottom]), loss_top + loss_bottom, [i_top, i_bottom]

    # --- code grids ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Code-index grids, one LongTensor ``[B, d, h, w]`` per level, top level first."""
        h = self._bottom_features(x)
        if self.levels == 1:
            return [self.quantizers[0].codes_for(h)[1]]
        z_top = self.encoder_top(h)
        q_top, i_top = self.quantizers[0].codes_for(z_top)
        z_bottom = self.pre_bottom(torch.cat([h, self.decoder_top(q_top)], dim=1))
        return [i_top, self.quantizers[1].codes_for(z_bottom)[1]]

    def decode_indices(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Index grids (top first, as from ``encode_indices``) -> reconstruction ``[B, 1, D, H, W]``."""
        if len(indices) != self.levels:
            raise ValueError(f"expected {self.levels} index grid(s), got {len(indices)}")
        quantized = [vq.lookup(idx.long()) for vq, idx in zip(self.quantizers, indices)]
        if self.channels_last:
            quantized = [q.contiguous(memory_format=torch.channels_last_3d) for q in quantized]
        return self.decode(quantized)

    def grid_shapes(self, spatial_size: Sequence[int]) -> list[tuple[int, int, int]]:
        """Code-grid shapes for an input of ``spatial_size`` (top first)."""
        bottom = tuple(int(s) // self.downsampling for s in spatial_size)
        if self.levels == 1:
            return [bottom]
        return [tuple(s // 2 for s in bottom), bottom]


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-volume reconstruction loss ``[B]``: ``mse`` or ``l1`` averaged over voxels."""
    if kind == "mse":
        error = (prediction - target).pow(2)
    elif kind == "l1":
        error = (prediction - target).abs()
    else:
        raise ValueError(f"loss.recon must be mse or l1, got {kind!r}")
    return error.flatten(1).mean(1)

