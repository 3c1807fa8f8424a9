"""Faithfulness of attention maps, measured against ground-truth structures and against the model itself.

Per subject, for maps ``[N, 1, D, H, W]`` in [0, 1] (``attrivae.attention.attention_map``):

- ``enrichment``: the share of the map's mass inside a structure divided by the structure's share
  of the body (brain or organ mask). 1 = no better than spreading the mass evenly over the body;
  a map equal to the structure scores ``1 / share``.
- ``pointing_game`` (Zhang et al. 2018): is the map's peak inside the structure, dilated by one
  cell of the grid the map was computed on (a layer map cannot point finer than its cell).
- ``iou``: intersection over union of the map thresholded at a fraction of its peak with the
  structure (the score of the Attri-VAE paper, Cetin et al. 2023, on EMIDEC's scar).
- ``deletion_insertion`` (Petsiuk et al. 2018): replace voxels in the map's order by a blurred copy
  (deletion) or reveal them on the blurred copy (insertion) and follow the explained target; the
  areas under both curves against the same areas for random orders.
- ``randomization_check`` (Adebayo et al. 2018): re-initialise the model from the top layer down
  (``cascading_randomization``) and compare each randomised model's maps with the trained
  model's (Spearman) against two maps of the trained model.
- ``measure_cost``: seconds and peak memory of computing a map.

``median_ci`` summarises a per-subject figure (median, 95% bootstrap interval) and
``paired_p`` tests a per-subject figure against its random reference (Wilcoxon signed-rank).
Which of these Quantus provides and why they are written here: docs/attention.md.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

__all__ = ["enrichment", "pointing_game", "iou", "median_ci", "perturbation_curve", "deletion_insertion",
           "random_orders", "paired_p", "spearman", "cascading_randomization", "randomization_check", "measure_cost"]


def _flat(volumes: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[N, ...]`` tensor or array -> float64 ``[N, V]``."""
    array = volumes.detach().cpu().numpy() if isinstance(volumes, torch.Tensor) else np.asarray(volumes)
    return array.reshape(array.shape[0], -1).astype(np.float64)


def enrichment(maps: torch.Tensor | np.ndarray, structure: torch.Tensor | np.ndarray,
               body: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map mass share inside ``structure`` over ``structure``'s share of ``body``, per subject.

    Args:
        maps: ``[N, ...]`` non-negative maps.
        structure, body: ``[N, ...]`` masks (> 0) of the same shape; the structure should lie in the body.

    Returns:
        ``[N]`` float64; NaN where the map or the structure is empty. The map's mass is counted
        over the whole volume, so mass outside the body lowers the figure.
    """
    m, s, b = _flat(maps), _flat(structure) > 0, _flat(body) > 0
    mass = m.sum(1)
    inside = (m * s).sum(1) / np.where(mass > 0, mass, np.nan)
    share = s.sum(1) / np.maximum(b.sum(1), 1)
    return inside / np.where(share > 0, share, np.nan)


def pointing_game(maps: torch.Tensor | np.ndarray, structure: torch.Tensor | np.ndarray,
                  cell: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """Whether each map's peak lies in ``structure`` dilated by one ``cell`` (voxels per axis).

    Args:
        maps: ``[N, 1, D, H, W]`` or ``[N, D, H, W]``.
        structure: masks of the same shape.
        cell: ``(d, h, w)`` input voxels per cell of the map's grid (``attention.map_cell``).

    Returns:
        ``[N]`` bool; False for an empty structure. Of tied peaks, the first in C order counts.
    """
    m = _flat(maps)
    shape = np.asarray(structure.shape if not isinstance(structure, torch.Tensor) else tuple(structure.shape))[-3:]
    s = _flat(structure).reshape(len(m), *shape) > 0
    # a box of ones: the dilation is a maximum filter, separable per axis (binary_dilation with a
    # 33^3 structure, one cell of a 3x4x3 layer on a 48x64x48 input, took minutes per map)
    box = [2 * int(c) + 1 for c in cell]
    hits = []
    for map_row, mask in zip(m, s):
        grown = ndimage.maximum_filter(mask, size=box, mode="constant", cval=False) if mask.any() else mask
        hits.append(bool(grown.reshape(-1)[int(np.argmax(map_row))]))
    return np.asarray(hits)


def iou(maps: torch.Tensor | np.ndarray, structure: torch.Tensor | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``[N]`` IoU of ``maps >= threshold * peak`` with ``structure`` (masks > 0), per subject."""
    m, s = _flat(maps), _flat(structure) > 0
    above = m >= threshold * m.max(1, keepdims=True)
    above &= m > 0
    union = (above | s).sum(1)
    return (above & s).sum(1) / np.where(union > 0, union, np.nan)


def median_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """``(median, low, high)``: the median of the finite ``values`` and its percentile bootstrap interval
    (``scipy.stats.bootstrap``); NaNs without finite values, ``low == high == median`` for one."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    median = float(np.median(v))
    if len(v) < 2 or np.all(v == v[0]):
        return median, median, median
    result = stats.bootstrap((v,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", random_state=seed)
    return median, float(result.confidence_interval.low), float(result.confidence_interval.high)


def perturbation_curve(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fill: torch.Tensor,
                       order: np.ndarray, steps: int = 16, insertion: bool = False, batch: int = 9) -> np.ndarray:
    """The target along a deletion (or insertion) of voxels in ``order``.

    Args:
        score: ``[B, 1, D, H, W] -> [B]``, the explained target (larger = more of it).
        x: ``[1, 1, D, H, W]`` the scan; ``fill``: the same shape, what removed voxels become.
        order: ``[V]`` flat voxel indices, most important first.
        steps: the curve has ``steps + 1`` points at fractions ``0, 1/steps, ..., 1`` of the voxels.
        insertion: start from ``fill`` and reveal ``x`` in ``order`` instead.
        batch: volumes per forward pass.

    Returns:
        ``[steps + 1]`` float64 target values.
    """
    rank = torch.empty(order.size, dtype=torch.long)
    rank[torch.as_tensor(order, dtype=torch.long)] = torch.arange(order.size)
    rank = rank.view(x.shape).to(x.device)
    counts = [round(order.size * i / steps) for i in range(steps + 1)]
    first, second = (fill, x) if insertion else (x, fill)
    values = []
    with torch.no_grad():
        for start in range(0, len(counts), batch):
            chunk = counts[start:start + batch]
            volumes = torch.cat([torch.where(rank < c, second, first) for c in chunk])
            values.append(score(volumes).float().cpu().numpy().reshape(-1))
    return np.concatenate(values).astype(np.float64)


def _auc(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def deletion_insertion(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, attention: torch.Tensor,
                       fill: torch.Tensor, steps: int = 16, n_random: int = 10, seed: int = 0,
                       random_aucs: dict[str, float] | None = None) -> dict[str, Any]:
    """Deletion and insertion AUCs of one map, and the mean AUCs of ``n_random`` random orders.

    A faithful map gives a *lower* deletion AUC (the target falls fast) and a *higher* insertion
    AUC than random orders. AUCs are in the target's units over the fraction of voxels in [0, 1].

    Args:
        score: ``[B, 1, D, H, W] -> [B]`` target (for negative evidence: the negated target).
        x: ``[1, 1, D, H, W]``; ``attention``: its map, same shape; ``fill``: the blurred copy.
        steps, n_random, seed: curve resolution, random orders and their seed.
        random_aucs: ``{"random_deletion_auc", "random_insertion_auc"}`` already computed for this
            ``(score, x, fill)`` (they do not depend on the map), to skip recomputing them.

    Returns:
        ``{"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
        "deletion_curve", "insertion_curve"}`` (curves as lists).
    """
    rng = np.random.default_rng(seed)
    values = attention.detach().cpu().numpy().reshape(-1)
    order = np.lexsort((rng.random(values.size), -values))  # by map, ties in random order
    deletion = perturbation_curve(score, x, fill, order, steps)
    insertion = perturbation_curve(score, x, fill, order, steps, insertion=True)
    if random_aucs is None:
        random_aucs = random_orders(score, x, fill, steps, n_random, seed)
    return {"deletion_auc": _auc(deletion), "insertion_auc": _auc(insertion), **random_aucs,
            "deletion_curve": deletion.tolist(), "insertion_curve": insertion.tolist()}


def random_orders(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fill: torch.Tensor, steps: int = 16,
                  n_random: int = 10, seed: int = 0) -> dict[str, float]:
    """``{"random_deletion_auc", "random_insertion_auc"}``: mean AUCs over ``n_random`` random voxel orders."""
    rng = np.random.default_rng(seed + 1)
    size = int(np.prod(x.shape))
    deletions, insertions = [], []
    for _ in range(n_random):
        order = rng.permutation(size)
        deletions.append(_auc(perturbation_curve(score, x, fill, order, steps)))
        insertions.append(_auc(perturbation_curve(score, x, fill, order, steps, insertion=True)))
    return {"random_deletion_auc": float(np.mean(deletions)), "random_insertion_auc": float(np.mean(insertions))}


def paired_p(values: Sequence[float], reference: Sequence[float], alternative: str = "less") -> float:
    """One-sided Wilcoxon signed-rank p that ``values`` are ``alternative`` than ``reference``, paired per subject.

    ``less`` for deletion AUCs (a faithful map deletes faster than random), ``greater`` for insertion.
    NaN with fewer than two pairs or no difference at all.
    """
    v, r = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    keep = np.isfinite(v) & np.isfinite(r)
    if keep.sum() < 2 or np.all(v[keep] == r[keep]):
        return float("nan")
    return float(stats.wilcoxon(v[keep], r[keep], alternative=alternative).pvalue)


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman correlation of two maps (any equal shapes); 0 where one is constant (e.g. all zeros)."""
    x, y = _flat(a[None]).reshape(-1), _flat(b[None]).reshape(-1)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    return float(stats.spearmanr(x, y)[0])


def _stages(model: nn.Module, classifier: bool = True) -> list[str]:
    """Sub-modules of an Attri-VAE encoder path from the output down to the input."""
    names = ["classifier"] if classifier and getattr(model, "classifier", None) is not None else []
    names += ["to_moments", "encoder.head", "encoder.residual"]
    names += sorted((n for n, _ in model.named_modules() if n.count(".") == 2 and n.startswith("encoder.levels.")),
                    key=lambda n: -int(n.rsplit(".", 1)[1]))
    return names + ["encoder.stem"]


def cascading_randomization(model: nn.Module, seed: int = 0, classifier: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """Copies of ``model`` with more and more layers re-initialised, from the top down (Adebayo et al. 2018).

    Yields ``(stage, model copy)`` in eval mode: first the classifier (when there is one), then
    ``to_moments``, the encoder's head, residual stack, levels from the deepest, and the stem;
    each copy has that stage and every stage before it re-initialised (``reset_parameters``,
    which also resets batch-norm statistics). ``classifier=False`` leaves the classifier out: it is
    not on the path of a latent attribute's ``mu_k``, so randomising it cannot change that map.
    The global random state is left as it was.
    """
    clone = copy.deepcopy(model)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for stage in _stages(model, classifier):
            for module in clone.get_submodule(stage).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            yield stage, copy.deepcopy(clone).eval()
    finally:
        torch.random.set_rng_state(state)


def randomization_check(map_of: Callable[[nn.Module, torch.Tensor], Any], model: nn.Module, x: torch.Tensor,
                        reference: Any = None, noise: float = 0.02, ratio: float = 0.5, seed: int = 0,
                        classifier: bool = True) -> dict[str, Any]:
    """Model-randomisation sanity check of one attention method.

    Args:
        map_of: ``(model, x [N,1,D,H,W]) -> maps [N,1,D,H,W]``, the method under test, or a dict
            of such maps (e.g. one per evidence; each is checked and the result is a dict too).
        model: the trained model; ``x``: the volumes.
        reference: a second set of trained maps of ``x`` (e.g. from a model trained with another
            seed), shaped as ``map_of``'s result; default: the trained model's maps of ``x`` plus
            Gaussian noise of ``noise`` times each volume's standard deviation.
        ratio: the check passes when, at every stage of ``cascading_randomization``, the median
            Spearman between trained and randomised maps is below ``ratio`` times the median
            Spearman between the trained and the reference maps.
        classifier: randomise the classifier first (for class maps; False for an attribute's maps).

    Returns:
        ``{"trained_rho", "stages": {stage: median rho}, "max_random_rho", "passed"}`` (a dict of
        those when ``map_of`` returns a dict).
    """
    def median_rho(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.median([spearman(u, v) for u, v in zip(a, b)]))

    def keyed(maps: Any) -> dict[Any, torch.Tensor]:
        return maps if isinstance(maps, dict) else {None: maps}

    trained = keyed(map_of(model, x))
    if reference is None:
        generator = torch.Generator().manual_seed(seed)
        jitter = torch.randn(x.shape, generator=generator).to(x.device) * x.flatten(1).std(1).view(-1, 1, 1, 1, 1)
        reference = map_of(model, x + noise * jitter)
    reference = keyed(reference)
    stages: dict[Any, dict[str, float]] = {key: {} for key in trained}
    for stage, randomized in cascading_randomization(model, seed, classifier):
        maps = keyed(map_of(randomized, x))
        for key in trained:
            stages[key][stage] = median_rho(trained[key], maps[key])
    results = {}
    for key in trained:
        trained_rho, worst = median_rho(trained[key], reference[key]), max(stages[key].values())
        results[key] = {"trained_rho": trained_rho, "stages": stages[key], "max_random_rho": worst,
                        "passed": bool(worst < ratio * trained_rho)}
    return results[None] if list(results) == [None] else results


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure_cost(fn: Callable[[], Any], interval: float = 0.005) -> tuple[Any, float, float]:
    """``(fn(), seconds, peak MiB)``: wall time and the peak memory added while ``fn`` ran.

    On CUDA the peak is ``torch.cuda.max_memory_allocated``; on CPU the resident set size,
    sampled every ``interval`` seconds from ``/proc/self/statm`` (Linux), above its level at the start.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**20
    base = _resident_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _resident_bytes())
    return result, seconds, (peak[0] - base) / 2**20
