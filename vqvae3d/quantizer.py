"""Vector quantizer whose codebook learns by exponential moving averages (VQ-VAE, EMA variant).

The codebook is not trained by gradients: each training step moves every code toward the
mean of the encoder outputs assigned to it, through EMAs of the per-code assignment counts
and vector sums (van den Oord et al. 2017, appendix; Razavi et al. 2019). Against the
codebook collapse MONAI's ``VQVAE`` shows on small 3D data sets, the codebook is

- initialised from data: k-means (k-means++ seeding, then a few Lloyd iterations) on the
  encoder outputs of the first training batch, so every code starts where there are vectors;
- repaired: a code whose EMA count falls under ``dead_threshold`` is restarted at a current
  encoder output drawn with probability proportional to its squared distance from its
  nearest code (the k-means++ rule). A uniform draw lands mostly on the background of a
  scan, next to a code that already serves it, and the restarted code dies again.

Under DDP (``torch.distributed`` initialised) the per-step counts and sums are summed over
ranks before the EMA update, and k-means and restarts are computed on rank 0 and broadcast,
so every rank holds the same codebook. Usage counts for the epoch's perplexity accumulate in
``usage`` (not a buffer: not saved, not broadcast) and are reduced by the caller.

Written here rather than taken from ``vector-quantize-pytorch`` because that library's 3D
path crashed in the tested version and its statistics are not exposed per epoch; see
docs/vqvae3d.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medlatent.precision import full_precision

__all__ = ["EMAQuantizer", "perplexity", "codes_used_fraction", "nearest_codes", "d2_sample"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def nearest_codes(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean) for each row.

    Args:
        flat: ``[N, C]`` vectors.
        codebook: ``[K, C]`` codes.

    Returns:
        ``[N]`` int64 indices. ``|x|^2 - 2 x.e + |e|^2`` is one ``addmm`` (a single matrix
        product), not a loop over codes.
    """
    distances = torch.addmm(codebook.pow(2).sum(1)[None, :], flat, codebook.t(), beta=1.0, alpha=-2.0)
    # |x|^2 is constant per row and does not change the argmin
    return distances.argmin(dim=1)


def d2_sample(flat: torch.Tensor, codebook: torch.Tensor, n: int, indices: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` rows of ``flat [N, C]`` drawn with probability proportional to their squared distance from the nearest code.

    The k-means++ seeding rule (Arthur and Vassilvitskii 2007): new codes go where the codebook
    serves the data worst. ``indices [N]`` (each row's nearest code) saves the search when known.
    Rows that coincide with a code have weight zero; if all do, the draw is uniform.
    """
    if indices is None:
        indices = nearest_codes(flat, codebook)
    weights = (flat - codebook[indices]).pow(2).sum(1).double()  # [N]
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    return flat[torch.multinomial(weights, n, replacement=True)]


def perplexity(counts: torch.Tensor) -> float:
    """``exp(entropy)`` of the code-usage distribution given by ``counts [K]``: K if uniform, 1 if one code."""
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())


def codes_used_fraction(counts: torch.Tensor) -> float:
    """Fraction of codes assigned at least once in ``counts [K]``."""
    return float((counts > 0).double().mean())


class EMAQuantizer(nn.Module):
    """Nearest-code quantizer with an EMA codebook, k-means initialisation and dead-code restarts.

    Args:
        num_codes: codebook size K.
        dim: code dimension C (the encoder's output channels).
        decay: EMA decay of counts and sums, in (0, 1); 0.99 by default.
        commitment: weight of ``|z - sg(q)|^2`` in the returned loss (0.25).
        eps: Laplace smoothing of the counts, so an empty code never divides by zero.
        dead_threshold: a code whose EMA count is below this is restarted (0 disables restarts).
        kmeans_iters: Lloyd iterations of the data initialisation (0: random data vectors).
        kmeans_max_points: at most this many vectors enter k-means (a random subset).
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, commitment: float = 0.25, eps: float = 1e-5,
                 dead_threshold: float = 1.0, kmeans_iters: int = 10, kmeans_max_points: int = 20000) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be positive, got {num_codes}, {dim}")
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.decay, self.commitment, self.eps = float(decay), float(commitment), float(eps)
        self.dead_threshold = float(dead_threshold)
        self.kmeans_iters, self.kmeans_max_points = int(kmeans_iters), int(kmeans_max_points)
        self.register_buffer("codebook", torch.randn(num_codes, dim) * 0.1)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", self.codebook.clone())
        # a float flag (not bool): every DDP backend can broadcast it with the other buffers
        self.register_buffer("initialized", torch.zeros(()))
        # per-epoch usage, reset by reset_usage(); a plain attribute so DDP does not broadcast it
        self.usage = torch.zeros(num_codes, dtype=torch.float64)

    # --- statistics ---------------------------------------------------------------------
    def reset_usage(self) -> None:
        """Start a new usage tally (call at the start of an epoch)."""
        self.usage = torch.zeros(self.num_codes, dtype=torch.float64)

    # --- forward -------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize a feature map.

        Args:
            z: ``[B, C, d, h, w]`` encoder output.

        Returns:
            ``(q, indices, loss)``: ``q [B, C, d, h, w]`` with straight-through gradients to
            ``z``; ``indices [B, d, h, w]`` int64; ``loss`` scalar ``commitment * mse(z, sg(q))``.
        """
        if z.ndim != 5 or z.shape[1] != self.dim:
            raise ValueError(f"expected [B, {self.dim}, d, h, w], got {tuple(z.shape)}")
        b, c, d, h, w = z.shape
        # distances, EMA statistics and the commitment loss in fp32 even under autocast (bf16's
        # 8-bit mantissa would pick wrong nearest codes and drift the EMA sums)
        with full_precision(z):
            flat = z.float().permute(0, 2, 3, 4, 1).reshape(-1, c)  # [N, C]
            if self.training and not bool(self.initialized > 0):
                self._kmeans_init(flat.detach())
            indices = nearest_codes(flat.detach(), self.codebook)  # [N]
            counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)  # [K]
            self.usage = self.usage + counts.detach().cpu().double()
            if self.training:
                self._ema_update(flat.detach(), indices, counts)
            q = F.embedding(indices, self.codebook).view(b, d, h, w, c).permute(0, 4, 1, 2, 3)  # fp32
            loss = self.commitment * F.mse_loss(z.float(), q.detach())
        q = z + (q.to(z.dtype) - z).detach()  # straight-through estimator, in the encoder's dtype
        return q, indices.view(b, d, h, w), loss

    @torch.no_grad()
    def codes_for(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes without codebook update, usage count or gradient.

        ``z [B, C, d, h, w] -> (q [B, C, d, h, w], indices [B, d, h, w])``.
        """
        b, c, d, h, w = z.shape
        with full_precision(z):
            indices = nearest_codes(z.float().permute(0, 2, 3, 4, 1).reshape(-1, c), self.codebook).view(b, d, h, w)
        return self.lookup(indices).to(z.dtype), indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of an index grid: ``[B, d, h, w]`` int64 -> ``[B, C, d, h, w]``."""
        if indices.min() < 0 or indices.max() >= self.num_codes:
            raise ValueError(f"code indices must lie in [0, {self.num_codes}), got {int(indices.min())}..{int(indices.max())}")
        return F.embedding(indices, self.codebook).permute(0, 4, 1, 2, 3).contiguous()

    # --- codebook learning -----------------------------------------------------------------
    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)  # [K, C]
        if _distributed():
            # one collective for both statistics: every rank then applies the same update
            packed = torch.cat([counts[:, None], sums], dim=1)
            dist.all_reduce(packed)
            counts, sums = packed[:, 0], packed[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps the total mass while lifting empty codes off zero
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        previous = self.codebook.clone() if self.dead_threshold > 0 else None
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        if previous is not None:
            self._restart_dead(flat, previous, indices)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_threshold  # [K]
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # rank 0 draws the replacements from its batch, weighted by the distance to the codes the
        # batch was quantized with; broadcasting keeps codebooks identical
        picks = d2_sample(flat, codebook, n_dead, indices)
        if _distributed():
            dist.broadcast(picks, src=0)
        self.codebook[dead] = picks
        # a restarted code counts as one assignment, so it survives a few steps to attract vectors
        self.cluster_size[dead] = max(self.dead_threshold, 1.0)
        self.embed_sum[dead] = picks * self.cluster_size[dead][:, None]

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        if flat.shape[0] > self.kmeans_max_points:
            flat = flat[torch.randperm(flat.shape[0], device=flat.device)[: self.kmeans_max_points]]
        centres = self._kmeanspp_seeds(flat)
        counts = torch.zeros(self.num_codes, device=flat.device)
        for _ in range(max(self.kmeans_iters, 1)):
            assign = nearest_codes(flat, centres)
            counts = torch.bincount(assign, minlength=self.num_codes).to(flat.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
        if _distributed():
            dist.broadcast(centres, src=0)
            dist.broadcast(counts, src=0)
        self.codebook.copy_(centres)
        # start the EMA from the k-means clusters, so the first updates do not drag codes to zero
        self.cluster_size.copy_(counts.clamp(min=1.0))
        self.embed_sum.copy_(centres * self.cluster_size[:, None])
        self.initialized.fill_(1.0)

    @torch.no_grad()
    def _kmeanspp_seeds(self, flat: torch.Tensor, rounds: int = 8) -> torch.Tensor:
        """``num_codes`` seeds by k-means++ D^2 sampling, in ``rounds`` batches rather than one code at a time."""
        centres = flat[torch.randint(0, flat.shape[0], (1,), device=flat.device)]
        remaining = self.num_codes - 1
        for round_ in range(rounds):
            if remaining <= 0:
                break
            # equal batches, each drawn against all the seeds chosen so far
            n = -(-remaining // (rounds - round_))
            centres = torch.cat([centres, d2_sample(flat, centres, n)])
            remaining -= n
        return centres.clone()
