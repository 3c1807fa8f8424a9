"""How good a prior is: bits per code against the unigram baseline, MMD to real volumes, diversity."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medlatent.metrics import reconstruction_metrics
from medlatent.vqvae3d.features import volume_features

__all__ = ["unigram_bits_per_code", "mmd_test", "mean_pairwise_ssim", "pooled_features"]


def unigram_bits_per_code(train_codes: list[torch.Tensor], test_codes: list[torch.Tensor],
                          num_codes: list[int]) -> float:
    """Bits per code of the test grids under each level's code frequencies on the training grids.

    Add-one smoothing keeps codes unseen in training finite. This is the baseline a prior must beat.
    """
    bits, count = 0.0, 0
    for train, test, k in zip(train_codes, test_codes, num_codes):
        freq = torch.bincount(train.flatten(), minlength=k).double() + 1.0
        logp = torch.log2(freq / freq.sum())
        bits -= float(logp[test.flatten()].sum())
        count += test.numel()
    return bits / max(count, 1)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased squared MMD between feature sets ``x`` ``[n, F]`` and ``y`` ``[m, F]`` and its permutation p-value.

    Gaussian kernel on features standardised with the pooled mean and standard deviation; the
    bandwidth is the median pairwise distance (median heuristic). The p-value is
    ``(1 + #{permuted MMD >= observed}) / (1 + permutations)`` with the labels of the pooled
    set shuffled. Written here because it is twenty lines and the libraries that have it
    (torchmetrics' KID, alibi-detect) are heavy dependencies for one statistic.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)  # [n + m, n + m]
    bandwidth = np.median(sq[np.triu_indices(len(z), 1)]) or 1.0
    kernel = np.exp(-sq / bandwidth)
    n = len(x)

    def statistic(index: np.ndarray) -> float:
        a, b = index[:n], index[n:]
        kxx, kyy, kxy = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
        m = len(b)
        return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2 * kxy.mean())

    observed = statistic(np.arange(len(z)))
    rng = np.random.default_rng(seed)
    exceed = sum(statistic(rng.permutation(len(z))) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations)


def mean_pairwise_ssim(volumes: torch.Tensor, data_range: float, max_pairs: int = 300, seed: int = 0) -> float:
    """Mean SSIM over pairs of ``volumes`` ``[n, 1, D, H, W]`` (at most ``max_pairs`` random pairs).

    Lower means more diverse; compare samples against the same figure for real volumes.
    """
    pairs = [(i, j) for i in range(len(volumes)) for j in range(i + 1, len(volumes))]
    if not pairs:
        return float("nan")
    if len(pairs) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(keep)]
    values = []
    for start in range(0, len(pairs), 16):
        chunk = pairs[start:start + 16]
        a = volumes[[i for i, _ in chunk]]
        b = volumes[[j for _, j in chunk]]
        values.append(reconstruction_metrics(a, b, data_range=data_range)["ssim"])
    return float(torch.cat(values).mean())


def pooled_features(vqvae: nn.Module, volumes: torch.Tensor) -> np.ndarray:
    """The VQ-VAE's pooled encoder features (``pre_*`` of ``vqvae3d.features.volume_features``): ``[n, F]``."""
    rows = []
    for volume in volumes:
        features, _ = volume_features(vqvae, volume[None])
        rows.append([v for k, v in features.items() if k.startswith("pre_")])
    return np.asarray(rows, dtype=np.float64)
