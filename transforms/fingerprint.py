"""The training data's fingerprint (raw intensity percentiles, spacing, shape, orientation) and a new scan checked against it.

A run trained on phantoms reconstructs a head CT without complaint, and its output means nothing.
``train`` records what its training scans looked like on disk, before any normalisation
(``RUN/fingerprint.json``: :func:`summarize` of :func:`volume_facts`), and the commands that take
a scan compare it (:func:`differences`) and warn when it does not look like that data.

The facts come from the loader's pass (``transforms.pipeline.LoadVolumed`` stores the raw
intensity percentiles in the image's metadata; MONAI's reader stores the file's affine and shape),
so recording them costs no extra read.

Tolerances (a scan is unlike the training data when any fails):

- intensity: each of the 0.5th, 50th and 99.5th percentiles within the training scans' range of
  that percentile, widened by the larger of that range and 10% of the training intensity span;
- spacing (sorted, so axis order does not matter): within [training min / 1.5, training max x 1.5];
- shape (sorted): within [training min / 2, training max x 2];
- orientation (axis codes of the file): one of the training scans' orientations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.data.utils import affine_to_spacing

__all__ = ["PERCENTILES", "META_KEY", "intensity_percentiles", "volume_facts", "summarize", "differences"]

PERCENTILES = (0.5, 50.0, 99.5)
# the image metadata key LoadVolumed stores the raw percentiles under
META_KEY = "intensity_percentiles"
# percentiles of at most this many voxels (an even subsample): a 512^3 CT costs no more than a 100^3 MRI
_SAMPLE = 1_000_000
SPACING_FACTOR = 1.5
SHAPE_FACTOR = 2.0
INTENSITY_MARGIN = 0.1


def intensity_percentiles(data: np.ndarray) -> np.ndarray:
    """``[3]`` float64: the :data:`PERCENTILES` of the finite voxels of ``data`` (NaN when there are none)."""
    flat = np.asarray(data).reshape(-1)
    flat = flat[:: max(1, flat.size // _SAMPLE)]
    flat = flat[np.isfinite(flat)]
    if not flat.size:
        return np.full(len(PERCENTILES), np.nan)
    return np.percentile(flat.astype(np.float64), PERCENTILES)


def volume_facts(meta: Mapping[str, Any]) -> dict[str, Any]:
    """One loaded image's facts from its MetaTensor ``meta`` (as ``LoadVolumed`` leaves it).

    Returns:
        ``{"percentiles": [3], "spacing": [3] mm, "shape": [3], "orientation": "LPS"}`` of the file as stored.
    """
    affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
    return {"percentiles": [float(v) for v in np.asarray(meta[META_KEY]).reshape(-1)],
            "spacing": [float(s) for s in np.asarray(affine_to_spacing(affine, r=3))],
            "shape": [int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1)[:3]],
            "orientation": "".join(nib.aff2axcodes(affine))}


def summarize(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The fingerprint of a set of scans: per-fact ranges over ``facts`` (from :func:`volume_facts`)."""
    percentiles = np.asarray([f["percentiles"] for f in facts], dtype=np.float64)  # [N, 3]
    spacing = np.sort(np.asarray([f["spacing"] for f in facts], dtype=np.float64), axis=1)  # [N, 3]
    shape = np.sort(np.asarray([f["shape"] for f in facts], dtype=np.int64), axis=1)  # [N, 3]
    return {
        "n": len(facts),
        "percentiles": list(PERCENTILES),
        "intensity_min": np.nanmin(percentiles, axis=0).tolist(),
        "intensity_max": np.nanmax(percentiles, axis=0).tolist(),
        "spacing_sorted_min": spacing.min(0).tolist(), "spacing_sorted_max": spacing.max(0).tolist(),
        "shape_sorted_min": shape.min(0).tolist(), "shape_sorted_max": shape.max(0).tolist(),
        "orientations": sorted({f["orientation"] for f in facts}),
    }


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def differences(fingerprint: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """How a scan's ``facts`` differ from the training ``fingerprint``, one phrase each (empty: it looks alike)."""
    found = []
    lo, hi = np.asarray(fingerprint["intensity_min"]), np.asarray(fingerprint["intensity_max"])
    span = float(np.nanmax(hi) - np.nanmin(lo))
    for q, value, a, b in zip(fingerprint["percentiles"], facts["percentiles"], lo, hi):
        margin = max(b - a, INTENSITY_MARGIN * span)
        if not a - margin <= value <= b + margin:
            found.append(f"intensity {q:g}th percentile {value:.4g} (training scans: {a:.4g} to {b:.4g})")
    spacing = np.sort(np.asarray(facts["spacing"], dtype=np.float64))
    s_lo, s_hi = np.asarray(fingerprint["spacing_sorted_min"]), np.asarray(fingerprint["spacing_sorted_max"])
    if (spacing < s_lo / SPACING_FACTOR).any() or (spacing > s_hi * SPACING_FACTOR).any():
        found.append(f"spacing {_fmt(facts['spacing'])} mm (training scans, sorted: {_fmt(s_lo)} to {_fmt(s_hi)})")
    shape = np.sort(np.asarray(facts["shape"]))
    z_lo, z_hi = np.asarray(fingerprint["shape_sorted_min"]), np.asarray(fingerprint["shape_sorted_max"])
    if (shape < z_lo / SHAPE_FACTOR).any() or (shape > z_hi * SHAPE_FACTOR).any():
        found.append(f"shape {tuple(facts['shape'])} (training scans, sorted: {tuple(z_lo)} to {tuple(z_hi)})")
    if facts["orientation"] not in fingerprint["orientations"]:
        found.append(f"orientation {facts['orientation']} (training scans: {', '.join(fingerprint['orientations'])})")
    return found
