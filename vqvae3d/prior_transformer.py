"""A decoder-only transformer prior over a flattened code grid, with key/value caching for sampling.

The network is MONAI's :class:`~monai.networks.nets.DecoderOnlyTransformer` (token and absolute
position embeddings, causal :class:`~monai.networks.blocks.TransformerBlock` s, a logit head);
the grid is flattened in an order from MONAI's :class:`~monai.utils.ordering.Ordering`
(``raster_scan`` by default, ``s_curve`` or ``random``). What is added here:

- a start token per class (class conditioning costs nothing extra at sampling time), and for
  the bottom grid of a two-level VQ-VAE the top grid's context features added to the input at
  each position (aligned with the code that position predicts);
- :meth:`TransformerPrior.sample`, which keeps every layer's keys and values so that each new
  token costs one incremental step over the MONAI blocks' own weights. MONAI's
  ``VQVAETransformerInferer.sample`` reruns the whole growing sequence for every token
  (quadratic in the number of codes per layer instead of linear).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DecoderOnlyTransformer
from monai.utils.ordering import Ordering
from torch import nn

from medlatent.vqvae3d.prior_common import GridContext, one_thread, sample_tokens

__all__ = ["TransformerPrior", "ORDERINGS", "grid_ordering"]

ORDERINGS = ("raster_scan", "s_curve", "random")


def grid_ordering(kind: str, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """``[L]`` raster indices in generation order: ``sequence = grid.flatten()[order]``.

    ``random`` draws its permutation from a NumPy generator seeded with ``seed``
    (MONAI's ``Ordering`` shuffles with the global NumPy state, which is saved and restored).
    """
    if kind not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {kind!r}")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        order = Ordering(kind, spatial_dims=3, dimensions=(1, *shape)).get_sequence_ordering()
    finally:
        np.random.set_state(state)
    return torch.as_tensor(np.asarray(order), dtype=torch.long)


class TransformerPrior(nn.Module):
    """``p(code_i | codes before i in the ordering, label, context)`` with a MONAI decoder-only transformer.

    Args:
        num_codes: codebook size ``K``.
        shape: ``(d, h, w)`` of the code grid; the sequence has ``L = d * h * w`` tokens.
        dim: width of the attention layers.
        depth: number of transformer blocks.
        heads: attention heads (``dim`` must be divisible by it).
        ordering: ``raster_scan`` (default), ``s_curve`` or ``random`` (see :func:`grid_ordering`).
        num_classes: classes of the label conditioning (0: unconditional).
        context_codes: codebook size of a conditioning grid (top level of a two-level VQ-VAE), or None.
        dropout: dropout on the input embeddings.
    """

    def __init__(self, num_codes: int, shape: tuple[int, int, int], dim: int = 128, depth: int = 4, heads: int = 4,
                 ordering: str = "raster_scan", num_classes: int = 0, context_codes: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_codes, self.shape, self.num_classes = int(num_codes), tuple(int(s) for s in shape), int(num_classes)
        self.length = math.prod(self.shape)
        # tokens: K codes, then one start token per class (or a single one when unconditional)
        self.net = DecoderOnlyTransformer(num_tokens=self.num_codes + max(1, self.num_classes), max_seq_len=self.length,
                                          attn_layers_dim=dim, attn_layers_depth=depth, attn_layers_heads=heads,
                                          embedding_dropout_rate=dropout, use_flash_attention=True)
        for block in self.net.blocks:
            # SABlock keeps an L x L causal mask as a persistent buffer even on the flash path, where
            # it is unused: 36 MiB per block for a 16x16x12 grid in every checkpoint. Drop it.
            del block.attn._buffers["causal_mask"]
            block.attn.register_buffer("causal_mask", torch.empty(0), persistent=False)
        self.register_buffer("order", grid_ordering(ordering, self.shape))
        self.register_buffer("revert", torch.argsort(self.order))
        self.context = GridContext(context_codes, dim, self.shape) if context_codes else None

    def _start(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Start token per sequence: ``[B]``."""
        if self.num_classes:
            if labels is None:
                raise ValueError("this prior is class-conditional: pass labels [B]")
            return self.num_codes + labels.to(device)
        return torch.full((batch,), self.num_codes, dtype=torch.long, device=device)

    def _context_seq(self, context: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Top-grid features in generation order: ``[B, L, dim]``, or None."""
        if self.context is None:
            return None
        if context is None:
            raise ValueError("this prior is conditioned on a top-level grid: pass context [B, d', h', w']")
        feats = self.context(context).flatten(2).transpose(1, 2)  # [B, C, d, h, w] -> [B, L, C] raster
        return feats[:, self.order].expand(batch, -1, -1)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every code given the earlier ones (teacher forcing, one causal pass).

        Args:
            codes: ``[B, d, h, w]`` LongTensor.
            labels: ``[B]`` class indices (class-conditional priors).
            context: ``[B, d', h', w']`` top-level codes (conditioned priors).

        Returns:
            ``[B, K, d, h, w]`` logits, back in grid layout.
        """
        b = codes.shape[0]
        seq = codes.flatten(1)[:, self.order]  # [B, L] in generation order
        inputs = torch.cat([self._start(labels, b, codes.device)[:, None], seq[:, :-1]], dim=1)  # [B, L]
        x = self.net.token_embeddings(inputs) + self.net.position_embeddings(inputs)  # [B, L, dim]
        ctx = self._context_seq(context, b)
        if ctx is not None:
            x = x + ctx  # input i predicts code order[i]: it gets that position's top-level context
        x = self.net.embedding_dropout(x)
        for block in self.net.blocks:
            x = block(x)
        logits = self.net.to_logits(x)[..., :self.num_codes]  # [B, L, K]; start tokens are never targets
        logits = logits[:, self.revert]  # back to raster order
        return logits.transpose(1, 2).reshape(b, self.num_codes, *self.shape)

    def _new_cache(self, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Preallocated keys and values per block: ``[B, heads, L, head_dim]`` each."""
        cache = []
        for block in self.net.blocks:
            attn = block.attn
            shape = (batch, attn.num_heads, self.length, attn.dim_head)
            dtype = self.net.token_embeddings.weight.dtype
            cache.append((torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)))
        return cache

    def _step(self, token: torch.Tensor, t: int, cache: list[tuple[torch.Tensor, torch.Tensor]],
              ctx: torch.Tensor | None) -> torch.Tensor:
        """One incremental step: input token ``[B]`` at sequence index ``t`` -> logits ``[B, K]`` for code ``t``.

        Runs the MONAI blocks' own sublayers (norms, q/k/v and output projections, MLP) on the
        one new position and attends over the cached keys and values of positions ``<= t``.
        """
        b = token.shape[0]
        x = self.net.token_embeddings(token) + self.net.position_embeddings.embedding.weight[t]  # [B, dim]
        if ctx is not None:
            x = x + ctx[:, t]
        x = x[:, None]  # [B, 1, dim]
        for block, (keys, values) in zip(self.net.blocks, cache):
            attn = block.attn
            a = block.norm1(x)
            q, k, v = (proj(a).view(b, 1, attn.num_heads, attn.dim_head).transpose(1, 2)  # [B, heads, 1, hd]
                       for proj in (attn.to_q, attn.to_k, attn.to_v))
            keys[:, :, t:t + 1] = k
            values[:, :, t:t + 1] = v
            o = F.scaled_dot_product_attention(q, keys[:, :, :t + 1], values[:, :, :t + 1], scale=attn.scale)
            x = x + attn.out_proj(o.transpose(1, 2).reshape(b, 1, attn.inner_dim))
            x = x + block.mlp(block.norm2(x))
        return self.net.to_logits(x[:, 0])[:, :self.num_codes]

    @torch.no_grad()
    def cached_logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                      context: torch.Tensor | None = None) -> torch.Tensor:
        """The cached sampler's logits ``[B, K, d, h, w]`` when fed ``codes`` (to check it equals ``forward``)."""
        b = codes.shape[0]
        seq = codes.flatten(1)[:, self.order]
        cache, ctx = self._new_cache(b, codes.device), self._context_seq(context, b)
        token = self._start(labels, b, codes.device)
        out = []
        with one_thread():
            for t in range(self.length):
                out.append(self._step(token, t, cache, ctx))
                token = seq[:, t]
        logits = torch.stack(out, dim=1)[:, self.revert]  # [B, L, K] raster order
        return logits.transpose(1, 2).reshape(b, self.num_codes, *self.shape)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
               temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` grids ``[n, d, h, w]``, all in one batch, one cached step per code."""
        device = self.order.device
        cache, ctx = self._new_cache(n, device), self._context_seq(context, n)
        token = self._start(labels, n, device)
        seq = torch.empty((n, self.length), dtype=torch.long, device=device)
        with one_thread():
            for t in range(self.length):
                token = sample_tokens(self._step(token, t, cache, ctx), temperature, top_k, generator)
                seq[:, t] = token
        return seq[:, self.revert].reshape(n, *self.shape)
