"""A 3D gated PixelCNN: an autoregressive prior over a VQ-VAE's code-index grid.

The gated PixelCNN of van den Oord et al. (2016, "Conditional Image Generation with PixelCNN
Decoders") removes the blind spot of masked convolutions by splitting the receptive field into
a vertical and a horizontal stack. In 3D we need three stacks, one per raster level
(raster order is depth-major: ``z``, then ``y``, then ``x``):

- the **depth stack** at ``(z, y, x)`` sees slices ``<= z`` (convolution padded only in front
  along ``z``); it reaches the output only after a one-slice shift, so through it position
  ``(z, y, x)`` sees every voxel of the earlier slices;
- the **height stack** sees slice ``z``, rows ``<= y``, plus the shifted depth stack; after a
  one-row shift it gives every voxel of the earlier rows of the current slice;
- the **width stack** sees row ``(z, y)``, columns ``< x`` (the first layer shifts its input
  one column), plus the shifted height *and* depth stacks. The depth stack is fed to it
  directly too: the first row of a slice has no earlier row, so without this link it would
  not see the earlier slices (a blind spot at the first position of each slice).

Every stack uses gated activations (``tanh(a) * sigmoid(b)`` on the two halves of a
convolution's output) and residual connections. A class label and/or the top-level code grid
(two-level VQ-VAE) are added to every gate's pre-activation.

Because each stack depends only on coarser raster levels, sampling never reruns the full
network per position: the depth stack runs once per slice, the height stack once per row and
only the thin width stack once per voxel (:meth:`PixelCNN3d.sample`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medlatent.vqvae3d.prior_common import GridContext, one_thread, sample_tokens, shift

__all__ = ["PixelCNN3d", "GatedLayer3d"]


def _gate(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2C, ...] -> [B, C, ...]``: ``tanh`` of the first half times ``sigmoid`` of the second."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer3d(nn.Module):
    """One gated layer of the three causal stacks.

    Args:
        channels: feature channels ``C`` of every stack.
        kernel: odd kernel size; each stack's convolution spans ``kernel`` voxels across the
            axes it may see in full and ``kernel // 2 + 1`` along its causal axis.
        first: the first layer shifts the width stack's input so a voxel never sees itself.
    """

    def __init__(self, channels: int, kernel: int, first: bool) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        c, k, self.r, self.first = channels, kernel, kernel // 2, first
        self.d_conv = nn.Conv3d(c, 2 * c, (self.r + 1, k, k))
        self.h_conv = nn.Conv3d(c, 2 * c, (1, self.r + 1, k))
        self.w_conv = nn.Conv3d(c, 2 * c, (1, 1, self.r + 1))
        self.d_to_h = nn.Conv3d(2 * c, 2 * c, 1)
        self.d_to_w = nn.Conv3d(2 * c, 2 * c, 1)
        self.h_to_w = nn.Conv3d(2 * c, 2 * c, 1)
        self.w_out = nn.Conv3d(c, c, 1)

    def d_step(self, d: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth stack: ``d`` ``[B, C, D, H, W]`` -> (new ``d``, pre-activation ``[B, 2C, D, H, W]``)."""
        r = self.r
        pre = self.d_conv(F.pad(d, (r, r, r, r, r, 0)))  # padded in front only along z: sees slices <= z
        if cond is not None:
            pre = pre + cond
        return d + _gate(pre), pre

    def h_step(self, h: torch.Tensor, dz: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Height stack: ``h`` ``[B, C, D, H, W]`` and the depth-shifted ``dz`` ``[B, 2C, D, H, W]``."""
        r = self.r
        pre = self.h_conv(F.pad(h, (r, r, r, 0, 0, 0))) + self.d_to_h(dz)  # rows <= y of this slice
        if cond is not None:
            pre = pre + cond
        return h + _gate(pre), pre

    def w_step(self, w: torch.Tensor, hy: torch.Tensor, dz: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Width stack: ``w`` ``[B, C, D, H, W]``, row-shifted ``hy`` and depth-shifted ``dz`` (``2C`` channels)."""
        w_in = shift(w, 4) if self.first else w  # first layer: column x must not see its own code
        pre = self.w_conv(F.pad(w_in, (self.r, 0, 0, 0, 0, 0))) + self.h_to_w(hy) + self.d_to_w(dz)
        if cond is not None:
            pre = pre + cond
        return w_in + self.w_out(_gate(pre))


def _crop(t: torch.Tensor | None, z: slice, y: slice, x: slice) -> torch.Tensor | None:
    """Crop the spatial axes of ``t`` ``[B, C, D, H, W]``; axes of size 1 broadcast and stay."""
    if t is None:
        return None
    index = [slice(None), slice(None)]
    for axis, part in zip(t.shape[2:], (z, y, x)):
        index.append(part if axis > 1 else slice(None))
    return t[tuple(index)]


class PixelCNN3d(nn.Module):
    """Gated 3D PixelCNN over one code grid: ``p(code[z, y, x] | earlier codes, label, context)``.

    Args:
        num_codes: codebook size ``K`` (logits per position).
        shape: ``(d, h, w)`` of the code grid.
        channels: feature channels of each stack.
        layers: gated layers; the receptive field grows by ``kernel // 2`` per layer and axis.
        kernel: odd kernel size.
        num_classes: classes of the label conditioning (0: unconditional).
        context_codes: codebook size of a conditioning grid (the top level of a two-level
            VQ-VAE), or None.
        context_shape: ``(d', h', w')`` of that grid (documentation only: it is upsampled to ``shape``).
    """

    def __init__(self, num_codes: int, shape: tuple[int, int, int], channels: int = 32, layers: int = 8,
                 kernel: int = 3, num_classes: int = 0, context_codes: int | None = None,
                 context_shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.num_codes, self.shape, self.num_classes = int(num_codes), tuple(int(s) for s in shape), int(num_classes)
        c = channels
        self.embed = nn.Embedding(num_codes, c)
        self.layers = nn.ModuleList(GatedLayer3d(c, kernel, first=i == 0) for i in range(layers))
        self.label_embed = nn.Embedding(num_classes, c) if num_classes else None
        self.context = GridContext(context_codes, c, self.shape) if context_codes else None
        conditional = self.label_embed is not None or self.context is not None
        # one 1x1 projection per layer: conditioning -> depth, height and width gate biases
        self.cond_proj = nn.ModuleList(nn.Conv3d(c, 6 * c, 1) for _ in range(layers)) if conditional else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv3d(c, c, 1), nn.ReLU(), nn.Conv3d(c, num_codes, 1))

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed(codes).permute(0, 4, 1, 2, 3)  # [B, d, h, w] -> [B, C, d, h, w]

    def _conditioning(self, labels: torch.Tensor | None, context: torch.Tensor | None,
                      batch: int) -> list[tuple[torch.Tensor | None, ...]]:
        """Per layer ``(depth, height, width)`` gate biases, ``[B, 2C, d|1, h|1, w|1]`` each, or Nones."""
        if self.cond_proj is None:
            return [(None, None, None)] * len(self.layers)
        cond = 0
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this prior is class-conditional: pass labels [B]")
            cond = cond + self.label_embed(labels)[:, :, None, None, None]  # [B, C, 1, 1, 1]
        if self.context is not None:
            if context is None:
                raise ValueError("this prior is conditioned on a top-level grid: pass context [B, d', h', w']")
            cond = cond + self.context(context)  # [B, C, d, h, w]
        cond = cond.expand(batch, -1, -1, -1, -1) if cond.shape[0] == 1 else cond
        return [tuple(proj(cond).chunk(3, dim=1)) for proj in self.cond_proj]

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every position given all earlier ones (teacher forcing).

        Args:
            codes: ``[B, d, h, w]`` LongTensor of code indices.
            labels: ``[B]`` class indices (class-conditional priors).
            context: ``[B, d', h', w']`` top-level codes (conditioned priors).

        Returns:
            ``[B, K, d, h, w]`` logits; position ``(z, y, x)`` depends only on earlier positions in raster order.
        """
        x = self._embed(codes)
        d = h = w = x
        for layer, (cd, ch, cw) in zip(self.layers, self._conditioning(labels, context, codes.shape[0])):
            d, d_pre = layer.d_step(d, cd)
            dz = shift(d_pre, 2)  # slice z receives what the depth stack computed at z - 1
            h, h_pre = layer.h_step(h, dz, ch)
            hy = shift(h_pre, 3)  # row y receives what the height stack computed at y - 1
            w = layer.w_step(w, hy, dz, cw)
        return self.head(w)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
               temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` grids ``[n, d, h, w]`` in raster order, all ``n`` in one batch."""
        device = self.embed.weight.device
        codes = torch.zeros((n, *self.shape), dtype=torch.long, device=device)
        with one_thread():
            self._staged(codes, labels, context,
                         lambda logits, pos: sample_tokens(logits, temperature, top_k, generator))
        return codes

    @torch.no_grad()
    def staged_logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                      context: torch.Tensor | None = None) -> torch.Tensor:
        """The sampler's logits ``[B, K, d, h, w]`` when it is fed ``codes`` (to check it equals ``forward``)."""
        out = torch.zeros((codes.shape[0], self.num_codes, *self.shape), device=codes.device, dtype=self.embed.weight.dtype)

        def teacher(logits: torch.Tensor, pos: tuple[int, int, int]) -> torch.Tensor:
            out[:, :, pos[0], pos[1], pos[2]] = logits
            return codes[:, pos[0], pos[1], pos[2]]

        with one_thread():
            self._staged(codes.clone(), labels, context, teacher)
        return out

    def _staged(self, codes: torch.Tensor, labels: torch.Tensor | None, context: torch.Tensor | None,
                choose: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]) -> None:
        """Fill ``codes`` ``[B, d, h, w]`` in raster order, computing each stack only as often as it changes.

        The depth stack's output for slice ``z`` depends on slices ``< z`` only, so it is computed
        once per slice on the slices generated so far; the height stack once per row on the rows
        of the current slice generated so far; the width stack once per voxel on the current row
        up to that voxel. Every convolution is causal along the axis cropped, so the crops give
        exactly the values of the full forward pass.
        """
        n = codes.shape[0]
        depth, height, width = self.shape
        conds = self._conditioning(labels, context, n)
        every = slice(None)
        for z in range(depth):
            if z == 0:
                dzs = [0.0] * len(self.layers)
            else:
                d, dzs = self._embed(codes[:, :z]), []
                for layer, (cd, _, _) in zip(self.layers, conds):
                    d, d_pre = layer.d_step(d, _crop(cd, slice(0, z), every, every))
                    dzs.append(d_pre[:, :, z - 1:z])  # [B, 2C, 1, h, w]: feeds slice z
            dzs = [self._zeros_like_pre(n, dz, 1, height, width) for dz in dzs]
            for y in range(height):
                if y == 0:
                    hys = [self._zeros_like_pre(n, 0.0, 1, 1, width)] * len(self.layers)
                else:
                    h, hys = self._embed(codes[:, z:z + 1, :y]), []
                    for layer, dz, (_, ch, _) in zip(self.layers, dzs, conds):
                        h, h_pre = layer.h_step(h, dz[:, :, :, :y], _crop(ch, slice(z, z + 1), slice(0, y), every))
                        hys.append(h_pre[:, :, :, y - 1:y])  # [B, 2C, 1, 1, w]: feeds row y
                for x in range(width):
                    w = self._embed(codes[:, z:z + 1, y:y + 1, :x + 1])  # [B, C, 1, 1, x + 1]
                    for layer, dz, hy, (_, _, cw) in zip(self.layers, dzs, hys, conds):
                        w = layer.w_step(w, hy[..., :x + 1], dz[:, :, :, y:y + 1, :x + 1],
                                         _crop(cw, slice(z, z + 1), slice(y, y + 1), slice(0, x + 1)))
                    logits = self.head(w[..., x:x + 1]).flatten(1)  # [B, K]
                    codes[:, z, y, x] = choose(logits, (z, y, x))

    def _zeros_like_pre(self, n: int, value: torch.Tensor | float, d: int, h: int, w: int) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        channels = 2 * self.embed.embedding_dim
        return torch.zeros((n, channels, d, h, w), device=self.embed.weight.device, dtype=self.embed.weight.dtype)
