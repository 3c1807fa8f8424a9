"""Latent manipulation: move one attribute's dimension, or walk the line between two subjects, decode,
and check with an independent measurement that the decoded steps change the attribute they claim to."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression

from medlatent.attrivae.attributes import AttributeMap
from medlatent.attrivae.model import AttriVAE

__all__ = ["traverse_latents", "interpolate_latents", "decode_latents", "fit_calibration", "step_labels",
           "measure_traversal", "measure_reconstructions", "reconstruct", "phantom_measure", "intracranial_measure",
           "Measure"]

#: decoded steps ``[S, 1, D, H, W]`` -> attribute name -> the value measured on each step ``[S]``
Measure = Callable[[torch.Tensor], Mapping[str, np.ndarray]]


def traverse_latents(mu: torch.Tensor, dim: int, values: torch.Tensor) -> torch.Tensor:
    """Copies of ``mu [L]`` with dimension ``dim`` set to each of ``values [S]``: ``-> [S, L]``.

    The values are absolute positions on the latent axis (the prior is N(0, 1), so -3..3
    spans almost all of it), not offsets from the subject's own value.
    """
    z = mu.detach().reshape(1, -1).repeat(len(values), 1)
    z[:, dim] = values.to(z)
    return z


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` points on the segment from ``z_a [L]`` to ``z_b [L]``, both ends included: ``-> [steps, L]``."""
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    return (1 - t) * z_a.reshape(1, -1) + t * z_b.reshape(1, -1)


@torch.no_grad()
def decode_latents(model: AttriVAE, z: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Decode ``[S, L]`` latents in small batches (memory stays bounded): ``-> [S, 1, D, H, W]`` on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.decode(chunk.to(device)).cpu() for chunk in z.split(batch_size)])


def fit_calibration(latent: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """A 1-D linear fit ``attribute ~ slope * z_k + intercept`` to label traversal steps in attribute units.

    It is the same fit the interpretability metric scores, so its ``r2`` says how far the
    labels can be trusted. Returns ``{"slope", "intercept", "r2", "n"}`` (NaN with fewer than 2 points).
    """
    latent = np.asarray(latent, dtype=np.float64).reshape(-1, 1)
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(latent) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan"), "n": int(len(values))}
    fit = LinearRegression().fit(latent, values)
    return {"slope": float(fit.coef_[0]), "intercept": float(fit.intercept_), "r2": float(fit.score(latent, values)),
            "n": int(len(values))}


def step_labels(values: Sequence[float], fit: Mapping[str, float], low: float, high: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Attribute values to label latent positions ``values [S]`` with: the linear fit, clipped to ``[low, high]``.

    ``low``/``high`` are the attribute's range on the training split: a linear fit extrapolated
    to z = -3 can promise a negative volume, which no scan has; past the range the label says
    only "at most the smallest / at least the largest value seen in training".

    Returns:
        ``(labels [S], clipped [S] bool)``; labels are NaN where the fit is unknown.
    """
    z = np.asarray(values, dtype=np.float64)
    raw = fit.get("slope", math.nan) * z + fit.get("intercept", math.nan) if fit else np.full_like(z, math.nan)
    labels = np.clip(raw, low, high)
    clipped = np.isfinite(raw) & (labels != raw)
    return labels, clipped


def phantom_measure(spacing_mm: Sequence[float]) -> Measure:
    """A :data:`Measure` for phantom runs: ``transforms.phantoms.measure_phantom`` on each decoded step.

    ``spacing_mm``: the voxel size of the model's grid (the decoded volumes'), e.g. from the
    preprocessed item's affine. Reads ``cavity_volume_mm3`` and ``wall_thickness_mm``.
    """
    from medlatent.transforms.phantoms import measure_phantom

    def measure(volumes: torch.Tensor) -> dict[str, np.ndarray]:
        rows = [measure_phantom(volume[0].detach().cpu().float().numpy(), tuple(spacing_mm)) for volume in volumes]
        return {name: np.array([row[name] for row in rows]) for name in rows[0]}

    return measure


def intracranial_measure(spacing_mm: Sequence[float], name: str = "icv_mm3") -> Measure:
    """A :data:`Measure` for skull-stripped brain runs (``data.mask_image``): the intracranial volume of each
    decoded step (``transforms.brain.intracranial_volume_mm3``), read as attribute ``name``."""
    from medlatent.transforms.brain import intracranial_volume_mm3

    def measure(volumes: torch.Tensor) -> dict[str, np.ndarray]:
        return {name: np.array([intracranial_volume_mm3(v.detach().cpu().float().numpy(), tuple(spacing_mm))
                                for v in volumes])}

    return measure


def _change(values: np.ndarray, z: np.ndarray) -> float:
    """Size of the change of ``values [S]`` across the traversal: the least-squares slope on ``z`` times its span."""
    if not np.isfinite(values).all() or np.ptp(values) == 0:
        return 0.0
    slope = np.polyfit(z, values, 1)[0]
    return float(abs(slope) * np.ptp(z))


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _nanmax(values: Iterable[float]) -> float:
    """Largest finite value; NaN when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


@torch.no_grad()
def reconstruct(model: AttriVAE, x: torch.Tensor) -> torch.Tensor:
    """The model's reconstructions ``decode(mu)`` of ``x [N, 1, D, H, W]``: ``-> [N, 1, D, H, W]`` on the CPU."""
    device = next(model.parameters()).device
    mu = torch.cat([model.eval().encode(chunk.to(device))[0].cpu() for chunk in x.split(4)])
    return decode_latents(model, mu)


def measure_reconstructions(model: AttriVAE, x: torch.Tensor, measure: Measure) -> dict[str, np.ndarray]:
    """``measure`` read off the model's reconstructions ``decode(mu)`` of ``x [N, 1, D, H, W]``: ``{name: [N]}``.

    Compared with the ground truth of ``x``, it says whether the measurement can read decoded
    volumes at all before a traversal is judged by it: a decoder that blurs away the contrast the
    measurement relies on fails here, on volumes whose attribute values are known.
    """
    return {k: np.asarray(v, dtype=np.float64) for k, v in measure(reconstruct(model, x)).items()}


def measure_traversal(model: AttriVAE, x: torch.Tensor, amap: AttributeMap, measure: Measure,
                      population_sd: Mapping[str, float], steps: int = 9,
                      value_range: tuple[float, float] | Mapping[str, tuple[float, float]] = (-3.0, 3.0),
                      attributes: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
    """Does moving an attribute's latent dim change that attribute, and only it, in the decoded volumes?

    For each subject of ``x`` and each regularised attribute ``k``, ``mu`` is encoded, dim ``k`` is
    set to ``steps`` values in ``value_range``, the steps are decoded, and ``measure`` reads every
    attribute off each decoded volume independently of the model (phantoms: thresholds,
    ``transforms.phantoms.measure_phantom``; real scans: a supervised regressor,
    ``attrivae.attribute_regressor``).

    Figures per manipulated attribute ``k``, averaged over subjects:

    - ``spearman``: rank correlation between the step's latent value and the measured ``k``
      (0 when the measurement does not change; target >= 0.9).
    - ``off_target``: the largest, over the other measured attributes ``j``, of
      ``(change_j / sd_j) / (change_k / sd_k)``, changes being the least-squares slope over the
      steps times the latent span and ``sd`` the population SDs (target <= 0.3);
      ``off_target_by`` holds it per ``j``. The ratio is undefined for a subject whose measured
      ``k`` does not change at all; such subjects are left out of it, and it is NaN when that is
      every subject (a ratio over zero is no figure, not a huge one).
    - ``change_sd``: each measured attribute's change across the traversal in population SDs
      (mean over subjects), the manipulated one's included: the ratio's numerator and
      denominator, so that a large ``off_target`` can be told from a ``k`` that barely moves.

    Args:
        model: a trained Attri-VAE.
        x: ``[N, 1, D, H, W]`` preprocessed scans (e.g. the test split), encoded one at a time.
        amap: the run's attribute map (which latent dim each attribute is tied to).
        measure: decoded steps ``[S, 1, D, H, W]`` -> ``{name: [S] values}`` for the attributes it can read.
        population_sd: SD of each measured attribute over the training population.
        steps, value_range: the traversal (absolute latent values, as ``medlatent traverse``); a mapping
            gives each attribute its own range (e.g. its ``mu_k`` over the training scans: past it
            the decoder extrapolates).
        attributes: which regularised attributes to traverse (default all that ``measure`` reads).

    Returns:
        ``{attribute: {"spearman", "off_target", "off_target_by": {other: value}, "change_sd": {name: value},
        "subjects": N}}``.
    """
    chosen = list(attributes) if attributes is not None else list(amap.regularized)
    per: dict[str, dict[str, list]] = {name: {"spearman": [], "off": [], "change": []} for name in chosen}
    for index in range(len(x)):
        with torch.no_grad():
            mu = model.eval().encode(x[index:index + 1].to(next(model.parameters()).device))[0][0].cpu()
        for name in chosen:
            low, high = value_range[name] if isinstance(value_range, Mapping) else value_range
            z_values = torch.linspace(float(low), float(high), int(steps))
            z_np = z_values.numpy().astype(np.float64)
            volumes = decode_latents(model, traverse_latents(mu, amap.dim_of(name), z_values))
            measured = {k: np.asarray(v, dtype=np.float64) for k, v in measure(volumes).items()}
            if name not in measured:
                raise KeyError(f"the measurement does not read {name!r}; it reads {sorted(measured)}")
            own = measured[name]
            rho = spearmanr(z_np, own)[0] if np.ptp(own) > 0 else 0.0
            per[name]["spearman"].append(float(np.nan_to_num(rho)))
            change = {k: _change(v, z_np) / max(float(population_sd[k]), 1e-12) for k, v in measured.items()}
            per[name]["change"].append(change)
            per[name]["off"].append({other: value / change[name] if change[name] > 0 else math.nan
                                     for other, value in change.items() if other != name})
    out: dict[str, dict[str, object]] = {}
    for name, figures in per.items():
        others = sorted({k for row in figures["off"] for k in row})
        by = {other: _nanmean([row[other] for row in figures["off"]]) for other in others}
        out[name] = {"spearman": float(np.mean(figures["spearman"])) if figures["spearman"] else math.nan,
                     "off_target": _nanmax(by.values()) if by else 0.0, "off_target_by": by,
                     "change_sd": {k: float(np.mean([row[k] for row in figures["change"]]))
                                   for k in figures["change"][0]} if figures["change"] else {},
                     "subjects": len(figures["spearman"])}
    return out
