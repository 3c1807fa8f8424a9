"""Residual 3D convolutional encoder and decoder shared by the VQ-VAE and Attri-VAE.

The layout follows van den Oord et al. (VQ-VAE, 2017) and MONAI's ``VQVAE``: a stem
convolution, one stride-2 convolution per level (each halves every axis), a stack of
residual units at the bottom, and a 1x1x1 projection to the latent channels. The decoder
mirrors it with stride-2 transposed convolutions. Plain ``nn.Conv3d`` layers are used
rather than MONAI's ``Convolution`` wrapper so that the modules stay small, scriptable
and easy to name for Grad-CAM (``Encoder3d.levels[i]``); see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.utils import pixelshuffle, pixelunshuffle
from torch import nn

__all__ = ["ResidualUnit3d", "Encoder3d", "Decoder3d", "make_norm", "space_to_depth", "depth_to_space"]


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, C, D, H, W] -> [B, C*f^3, D/f, H/f, W/f]`` (lossless; inverse of ``depth_to_space``).

    Folding each f x f x f block of voxels into channels lets the first convolution run at 1/f
    of the resolution: on CPU, full-resolution convolutions with one or a few channels cost most
    of a training step (docs/architecture.md, "Space-to-depth"). MONAI's ``pixelunshuffle``
    (the 3D ``pixel_unshuffle``), whose channel order is the one this function had when it was
    written by hand, so checkpoints trained before keep their meaning (tests/medlatent/test_blocks.py).
    """
    if type(x) is not torch.Tensor:  # a MetaTensor would carry its affine through reshapes that break it
        x = x.as_subclass(torch.Tensor)
    return x if factor == 1 else pixelunshuffle(x, spatial_dims=3, scale_factor=factor)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, C*f^3, d, h, w] -> [B, C, d*f, h*f, w*f]`` (MONAI's ``pixelshuffle``, the 3D ``pixel_shuffle``)."""
    return x if factor == 1 else pixelshuffle(x, spatial_dims=3, scale_factor=factor)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer by name: ``none``, ``batch``, ``instance`` or ``group``."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be none, batch, instance or group, got {kind!r}")


class ResidualUnit3d(nn.Module):
    """``x + conv1x1(act(conv3x3(act(x))))``: the VQ-VAE residual unit.

    Args:
        channels: channels in and out.
        hidden_channels: channels of the 3x3x3 convolution (default ``channels``).
        norm: normalisation after the 3x3x3 convolution (see ``make_norm``).
    """

    def __init__(self, channels: int, hidden_channels: int | None = None, norm: str = "none") -> None:
        super().__init__()
        hidden = hidden_channels or channels
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv3d(channels, hidden, kernel_size=3, padding=1),
            make_norm(norm, hidden),
            nn.ReLU(),
            nn.Conv3d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder3d(nn.Module):
    """Residual 3D conv encoder: ``[B, in, D, H, W] -> [B, out, D/2^L, H/2^L, W/2^L]``.

    Args:
        in_channels: input channels (1 for a scan).
        channels: channels after each downsampling level; ``len(channels)`` = L levels.
        out_channels: channels of the output projection (the latent/embedding dim).
        num_res_units: residual units after the last level.
        res_channels: hidden channels of the residual units (default ``channels[-1]``).
        norm: normalisation inside levels and residual units.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        num_res_units: int = 2,
        res_channels: int | None = None,
        norm: str = "none",
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("channels must name at least one level")
        self.stem = nn.Conv3d(in_channels, channels[0], kernel_size=3, padding=1)
        levels = []
        previous = channels[0]
        for width in channels:
            # kernel 4, stride 2, padding 1 halves each axis exactly (even sizes)
            levels.append(
                nn.Sequential(
                    nn.Conv3d(previous, width, kernel_size=4, stride=2, padding=1),
                    make_norm(norm, width),
                    nn.ReLU(),
                    nn.Conv3d(width, width, kernel_size=3, padding=1),
                )
            )
            previous = width
        self.levels = nn.ModuleList(levels)
        self.residual = nn.Sequential(
            *[ResidualUnit3d(previous, res_channels or previous, norm) for _ in range(num_res_units)]
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv3d(previous, out_channels, kernel_size=1))
        self.downsampling = 2 ** len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for level in self.levels:
            x = level(x)
        return self.head(self.residual(x))


class Decoder3d(nn.Module):
    """Mirror of ``Encoder3d``: ``[B, in, d, h, w] -> [B, out, d*2^L, h*2^L, w*2^L]``.

    Args:
        in_channels: latent channels.
        channels: channels per level from the bottom up (reverse of the encoder's).
        out_channels: output channels (1 for a scan).
        num_res_units: residual units before the first upsampling.
        res_channels: hidden channels of the residual units (default ``channels[0]``).
        norm: normalisation inside levels and residual units.
        final_channels: width of the last level, the one at output resolution (default
            ``channels[-1]``). The decoder spends most of its time there, so a narrower last
            level buys speed where it costs the fewest parameters.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        num_res_units: int = 2,
        res_channels: int | None = None,
        norm: str = "none",
        final_channels: int | None = None,
    ) -> None:
        super().__init__()
        channels = list(channels)
        self.stem = nn.Conv3d(in_channels, channels[0], kernel_size=3, padding=1)
        self.residual = nn.Sequential(
            *[ResidualUnit3d(channels[0], res_channels or channels[0], norm) for _ in range(num_res_units)]
        )
        levels = []
        widths = channels + [final_channels or channels[-1]]
        for width, next_width in zip(widths[:-1], widths[1:]):
            levels.append(
                nn.Sequential(
                    nn.ReLU(),
                    nn.ConvTranspose3d(width, next_width, kernel_size=4, stride=2, padding=1),
                    make_norm(norm, next_width),
                    nn.ReLU(),
                    nn.Conv3d(next_width, next_width, kernel_size=3, padding=1),
                )
            )
        self.levels = nn.ModuleList(levels)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv3d(widths[-1], out_channels, kernel_size=3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.residual(self.stem(z))
        for level in self.levels:
            x = level(x)
        return self.head(x)
