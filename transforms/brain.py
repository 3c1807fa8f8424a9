"""Intracranial volume read directly off a skull-stripped brain scan: a judge-free measurement of decoded volumes.

With ``data.mask_image: true`` (IXI) every voxel outside the brain mask is 0, so the mask's volume
(the intracranial volume, CSF included) is the volume of the voxels above a low threshold. The
threshold is a fraction of the scan's intensity range, so it holds for [0, 1] model outputs and
for raw scans alike; holes are filled so that dark CSF inside the brain counts, as it does in the
label-derived ``icv_mm3``. On IXI at 3.2 mm its Spearman with MUSE's ICV is 0.99 on test scans
and 0.97 on an Attri-VAE's reconstructions of them (benchmarks/attention_faithfulness.py stores
both with each run's traversal figures).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["intracranial_volume_mm3"]


def intracranial_volume_mm3(image: np.ndarray, spacing_mm: Sequence[float], threshold: float = 0.05) -> float:
    """Volume of the largest connected component above ``threshold`` of the intensity range, holes filled.

    Args:
        image: ``[X, Y, Z]`` (leading singleton axes allowed) skull-stripped intensities, background 0.
        spacing_mm: voxel size along X, Y, Z.
        threshold: fraction of ``max - min`` above ``min`` that separates brain from background.

    Returns:
        mm^3; 0 for an image without contrast.
    """
    image = np.asarray(image, dtype=np.float32)
    while image.ndim > 3:
        image = image[0]
    low, high = float(np.min(image)), float(np.max(image))
    if not np.isfinite(image).all() or high <= low:
        return 0.0
    foreground = image > low + threshold * (high - low)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return 0.0
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    brain = ndimage.binary_fill_holes(largest)
    return float(brain.sum() * np.prod(np.asarray(spacing_mm, dtype=np.float64)))
