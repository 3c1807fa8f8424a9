"""Disentanglement metrics as AR-VAE defines them: interpretability, MIG, SAP, SCC and modularity.

Definitions follow Pati & Lerch's evaluation code (``ashispati/ar-vae``, ``utils/evaluation.py``),
computed here on the encoder means ``mu`` (AR-VAE used a sampled ``z``; the mean is the
deterministic representation the exports use). Attributes are continuous:

- mutual information ``MI[l, a]`` between latent dim ``l`` and attribute ``a`` by scikit-learn's
  k-nearest-neighbour estimator (``mutual_info_regression``); the entropy of an attribute is its
  MI with itself, estimated the same way;
- **interpretability** of attribute ``a``: R^2 of a 1-D linear fit of ``a`` from the latent dim
  with the highest MI with ``a``;
- **MIG** of ``a``: (largest MI - second largest MI over latent dims) / entropy of ``a``;
- **SAP** of ``a``: difference between the two largest R^2 (squared Pearson correlation) of ``a``
  with single latent dims;
- **SCC** of ``a``: the largest ``|Spearman rho|`` between ``a`` and a latent dim (pairs with
  p > 0.05 count as 0);
- **modularity** of latent dim ``l``: ``1 - (sum_a MI[l,a]^2 - max_a MI[l,a]^2) / (max_a MI[l,a]^2 (A-1))``,
  averaged over all latent dims (a dim with no information scores 0). Per attribute we report the
  modularity of the dim with the highest MI with that attribute. With one attribute every
  informative dim is trivially modular (1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.feature_selection import mutual_info_regression
from sklearn.linear_model import LinearRegression

__all__ = ["mutual_information", "attribute_entropy", "interpretability", "mig", "sap", "scc", "modularity",
           "disentanglement_report", "METRIC_KEYS", "MIN_SAMPLES"]

METRIC_KEYS = ("interpretability", "mig", "sap", "scc", "modularity")
#: the k-NN estimator (k = 3) needs a few more points than neighbours
MIN_SAMPLES = 5


def mutual_information(latents: np.ndarray, attributes: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[N, L], [N, A] -> MI [L, A]`` in nats (k-NN estimator, seeded jitter for determinism)."""
    mi = np.zeros((latents.shape[1], attributes.shape[1]))
    for a in range(attributes.shape[1]):
        mi[:, a] = mutual_info_regression(latents, attributes[:, a], random_state=seed)
    return mi


def attribute_entropy(attributes: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[N, A] -> [A]``: each attribute's MI with itself (AR-VAE's continuous entropy)."""
    return np.array([mutual_info_regression(attributes[:, a:a + 1], attributes[:, a], random_state=seed)[0]
                     for a in range(attributes.shape[1])])


def interpretability(latents: np.ndarray, attributes: np.ndarray, mi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per attribute: the latent dim with the highest MI and the R^2 of a linear fit from it. ``-> ([A] int, [A])``."""
    dims = np.argmax(mi, axis=0)
    scores = np.zeros(attributes.shape[1])
    for a, dim in enumerate(dims):
        x = latents[:, dim:dim + 1]
        scores[a] = LinearRegression().fit(x, attributes[:, a]).score(x, attributes[:, a])
    return dims, scores


def mig(mi: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """Mutual information gap per attribute: ``[L, A], [A] -> [A]`` (NaN for a constant attribute)."""
    if mi.shape[0] < 2:
        return np.full(mi.shape[1], np.nan)
    top = np.sort(mi, axis=0)[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(entropy > 0, (top[0] - top[1]) / entropy, np.nan)


def _r2_matrix(latents: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """``[L, A]`` squared Pearson correlation (0 for a constant latent dim), as AR-VAE's SAP score matrix."""
    lc = latents - latents.mean(0)
    ac = attributes - attributes.mean(0)
    cov = lc.T @ ac / max(len(latents) - 1, 1)  # [L, A]
    var_l = lc.var(0, ddof=1)[:, None]
    var_a = ac.var(0, ddof=1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = cov ** 2 / (var_l * var_a)
    return np.where((var_l > 1e-12) & (var_a > 0), r2, 0.0)


def sap(latents: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """Separated attribute predictability per attribute: top-1 minus top-2 R^2 over latent dims. ``-> [A]``."""
    r2 = np.sort(_r2_matrix(latents, attributes), axis=0)
    if r2.shape[0] < 2:
        return np.full(r2.shape[1], np.nan)
    return r2[-1] - r2[-2]


def scc(latents: np.ndarray, attributes: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation score per attribute and the ``[L, A]`` matrix of significant ``|rho|``."""
    matrix = np.zeros((latents.shape[1], attributes.shape[1]))
    for l in range(latents.shape[1]):
        for a in range(attributes.shape[1]):
            if np.ptp(latents[:, l]) == 0 or np.ptp(attributes[:, a]) == 0:
                continue  # Spearman is undefined for a constant; it carries no information
            rho, p = spearmanr(latents[:, l], attributes[:, a])
            matrix[l, a] = abs(rho) if p <= alpha else 0.0
    return matrix.max(axis=0), matrix


def modularity(mi: np.ndarray) -> np.ndarray:
    """Modularity per latent dim from ``MI [L, A] -> [L]`` (0 where a dim has no information)."""
    squared = mi ** 2
    largest = squared.max(axis=1)
    if mi.shape[1] == 1:
        return np.where(largest > 0, 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - (squared.sum(axis=1) - largest) / (largest * (mi.shape[1] - 1))
    return np.where(largest > 0, score, 0.0)


def disentanglement_report(latents: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                           seed: int = 0) -> dict[str, Any]:
    """All five metrics, averaged and per attribute.

    Args:
        latents: ``[N, L]`` encoder means.
        attributes: ``[N, A]`` attribute values (any affine scaling; the metrics do not depend on it).
        names: ``A`` attribute names.
        seed: seeds the MI estimator's jitter.

    Returns:
        ``{"interpretability", "mig", "sap", "scc", "modularity"}`` averages (modularity over all
        latent dims, the others over attributes) and ``per_attribute: {name: {..., "dim"}}`` where
        ``dim`` is the latent dim with the highest MI. NaN everywhere when ``N < MIN_SAMPLES`` or
        there are no attributes.
    """
    latents = np.asarray(latents, dtype=np.float64)
    attributes = np.asarray(attributes, dtype=np.float64).reshape(len(latents), -1)
    names = list(names)
    if len(latents) < MIN_SAMPLES or not names:
        nan = float("nan")
        return {**{k: nan for k in METRIC_KEYS},
                "per_attribute": {n: {**{k: nan for k in METRIC_KEYS}, "dim": -1} for n in names}}
    mi = mutual_information(latents, attributes, seed)
    dims, interp = interpretability(latents, attributes, mi)
    gaps = mig(mi, attribute_entropy(attributes, seed))
    separated = sap(latents, attributes)
    spearman, _ = scc(latents, attributes)
    modular = modularity(mi)
    per_attribute = {
        name: {"interpretability": float(interp[a]), "mig": float(gaps[a]), "sap": float(separated[a]),
               "scc": float(spearman[a]), "modularity": float(modular[dims[a]]), "dim": int(dims[a])}
        for a, name in enumerate(names)
    }
    return {"interpretability": float(np.mean(interp)), "mig": float(np.nanmean(gaps)) if np.isfinite(gaps).any() else float("nan"),
            "sap": float(np.mean(separated)), "scc": float(np.mean(spearman)), "modularity": float(np.mean(modular)),
            "per_attribute": per_attribute}
