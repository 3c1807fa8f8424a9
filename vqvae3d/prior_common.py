"""What both code-grid priors share: the top-grid context network and the token sampler.

Both priors (:mod:`vqvae3d.prior_pixelcnn`, :mod:`vqvae3d.prior_transformer`) model
``p(codes | label, top grid)``. The label enters as a learned embedding; the top grid of a
two-level VQ-VAE is fully known when the bottom grid is generated, so it is read by a
*non-causal* conv net (:class:`GridContext`) and added position by position.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GridContext", "sample_tokens", "shift", "one_thread"]


class GridContext(nn.Module):
    """Embed a conditioning code grid and bring it to the shape of the grid being modelled.

    Args:
        num_codes: codebook size of the conditioning grid.
        channels: feature channels of the output map.
        out_shape: ``(d, h, w)`` of the grid being modelled (the bottom grid).
        layers: residual 3x3x3 conv layers on the conditioning grid; they see the whole grid
            (no mask), so every bottom position can use the full top-level context.
    """

    def __init__(self, num_codes: int, channels: int, out_shape: tuple[int, int, int], layers: int = 2) -> None:
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.embed = nn.Embedding(num_codes, channels)
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=1) for _ in range(layers))
        self.out = nn.Conv3d(channels, channels, 1)

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        """``top`` ``[B, d', h', w']`` LongTensor -> ``[B, C, d, h, w]`` features."""
        x = self.embed(top).permute(0, 4, 1, 2, 3)  # [B, C, d', h', w']
        for conv in self.convs:
            x = x + conv(F.gelu(x))
        x = F.interpolate(x, size=self.out_shape, mode="nearest")  # [B, C, d, h, w]
        return self.out(x)


def shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Move ``x`` one step forward along ``dim`` (zeros enter at index 0, the last index drops).

    This is what makes a stack causal: after the shift, position ``i`` holds what was computed
    at ``i - 1`` and so never sees the input at ``i``.
    """
    pad = [0, 0] * (x.dim() - dim - 1) + [1, 0]  # F.pad lists the last dimension first
    return F.pad(x, pad).narrow(dim, 0, x.shape[dim])


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` ``[B, K]`` -> ``[B]`` LongTensor.

    ``temperature`` divides the logits (below 1 sharpens, above 1 flattens); ``top_k`` keeps
    only the ``k`` most likely tokens. The draw uses ``generator`` so sampling is reproducible.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op CPU thread, then restore the previous setting.

    Token-by-token sampling is thousands of tiny operations; splitting each across threads
    costs more in synchronisation than it gains (on a loaded 2-core machine a 3-voxel
    convolution went from 0.2 ms to 25 ms with 2 threads). GPUs are unaffected.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
