"""Synthetic 3D phantoms with known ground truth, for the demo and the tests (never for quality claims).

Each subject is a shell-shaped organ: an ellipsoidal wall around a bright cavity (a blood pool).
Per subject the cavity size, the wall thickness and the wall intensity vary; label-1 subjects
carry a focal lesion in the wall, as bright as the blood pool and bulging the wall outwards. A
smooth noise field and a multiplicative bias field make the images look acquired rather than drawn. Volumes are written as NIfTI with 2 mm voxels stored in
LPS order (not RAS), so that orientation handling is exercised by every pipeline that reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes, gaussian_filter, label

from medlatent.io import child_path
from medlatent.nifti import write_nifti
from medlatent.transforms.manifest import write_manifest

SPACING_MM = 2.0
# voxel (i, j, k) -> world: i runs to the Left, j to the Posterior, k to the Superior (LPS)
LPS_DIRECTIONS = np.diag([-1.0, -1.0, 1.0])
MASK_LABELS = {"wall": 1, "cavity": 2, "lesion": 3}
BLOOD_POOL = 1400.0  # cavity (and lesion) intensity: brighter than any wall (600-1000)
LESION_TERRITORY = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)  # voxel axes


def phantom(shape: tuple[int, int, int], rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One phantom subject.

    Args:
        shape: volume shape ``(X, Y, Z)`` in voxels.
        rng: the subject's random generator.
        label: 1 puts a focal lesion in the wall, 0 does not.

    Returns:
        ``image float32 [X, Y, Z]`` (wall ~ 600-1000), ``mask uint8 [X, Y, Z]`` (1 wall, 2 cavity, 3 lesion)
        and the ground truth ``{"cavity_volume_mm3", "wall_thickness_mm", "intensity"}``.
    """
    size = np.asarray(shape, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))  # [3, X, Y, Z]
    centre = (size - 1) / 2 + rng.uniform(-1.0, 1.0, 3)
    radii = size * np.array([0.22, 0.18, 0.20]) * rng.uniform(0.7, 1.1)  # cavity semi-axes, voxels
    thickness = rng.uniform(1.5, 3.5)  # wall, voxels
    offset = grid - centre[:, None, None, None]
    inner = np.sqrt(((offset / radii[:, None, None, None]) ** 2).sum(0))
    outer = np.sqrt(((offset / (radii + thickness)[:, None, None, None]) ** 2).sum(0))
    cavity, wall = inner < 1.0, (outer < 1.0) & (inner >= 1.0)

    wall_intensity = rng.uniform(600.0, 1000.0)
    image = np.full(shape, 50.0)
    image[wall] = wall_intensity
    image[cavity] = BLOOD_POOL
    mask = np.zeros(shape, dtype=np.uint8)
    mask[wall], mask[cavity] = MASK_LABELS["wall"], MASK_LABELS["cavity"]

    if label:
        # centre of the blob: mid-wall, in one territory of the wall (within ~30 degrees of the
        # +x, +y diagonal), as infarcts follow a coronary territory; anywhere on the shell would
        # need far more subjects than a demo has for a classifier to learn it
        direction = LESION_TERRITORY + 0.35 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        scale = 1.0 / np.sqrt(((direction / radii) ** 2).sum())  # distance to the cavity surface
        point = centre + direction * (scale + thickness / 2)
        blob = np.sqrt(((grid - point[:, None, None, None]) ** 2).sum(0)) < max(4.0, thickness + 2.0)
        # a focal mass that bulges the wall outwards by up to 2 voxels and enhances like the blood
        # pool (as scar does in late-gadolinium MRI). Not brighter than the blood pool: a lesion of
        # ~1% of the volume would then set the 99.5th percentile that intensity scaling uses, and
        # the label would leak into the global brightness of the scan. Not darker than the wall:
        # Grad-CAM shows positive evidence, and the absence of wall is not that
        bulge = np.sqrt(((offset / (radii + thickness + 2.0)[:, None, None, None]) ** 2).sum(0)) < 1.0
        lesion = blob & bulge & (inner >= 1.0)
        image[lesion] = BLOOD_POOL
        mask[lesion] = MASK_LABELS["lesion"]

    # smooth noise (correlated over ~2 voxels) plus a low-order multiplicative bias field
    image += gaussian_filter(rng.normal(0.0, 60.0, shape), sigma=1.0) + rng.normal(0.0, 10.0, shape)
    unit = grid / (size[:, None, None, None] - 1) - 0.5
    bias = np.exp((rng.uniform(-0.3, 0.3, 3)[:, None, None, None] * unit).sum(0)
                  + rng.uniform(-0.2, 0.2) * (unit[0] * unit[1]))
    image = np.clip(image * bias, 0.0, None).astype(np.float32)
    truth = {
        "cavity_volume_mm3": float(cavity.sum()) * SPACING_MM**3,
        "wall_thickness_mm": float(thickness) * SPACING_MM,
        "intensity": float(wall_intensity),
    }
    return image, mask, truth


def phantom_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """4x4 voxel -> RAS mm affine: 2 mm voxels stored LPS, centred on the world origin."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_DIRECTIONS * SPACING_MM
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    write_nifti(array, path, affine, dtype=array.dtype)


def write_phantom_dataset(out_dir: str | os.PathLike, n_subjects: int = 40, shape: tuple[int, int, int] = (32, 32, 32),
                          seed: int = 0) -> Path:
    """Write ``n_subjects`` phantoms as NIfTI and a manifest.

    Layout: ``out_dir/images/<subject>.nii.gz``, ``out_dir/masks/<subject>.nii.gz`` and
    ``out_dir/manifest.csv`` with columns subject, image, mask, label, cavity_volume_mm3,
    wall_thickness_mm, intensity (relative paths). Labels are balanced (half 1, half 0, shuffled).
    The same seed gives the same files.

    Returns:
        The manifest path.
    """
    out_dir = Path(out_dir).expanduser()
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_subjects) % 2)
    affine = phantom_affine(shape)
    rows = []
    for i in range(n_subjects):
        subject = f"phantom_{i:03d}"
        # one generator per subject: subject i is the same whatever n_subjects is
        image, mask, truth = phantom(shape, np.random.default_rng([seed, i]), int(labels[i]))
        image_path = child_path(out_dir / "images", subject, ".nii.gz")
        mask_path = child_path(out_dir / "masks", subject, ".nii.gz")
        _save(image, affine, image_path)
        _save(mask, affine, mask_path)
        rows.append({"subject": subject, "image": str(image_path.relative_to(out_dir.resolve())),
                     "mask": str(mask_path.relative_to(out_dir.resolve())), "label": int(labels[i]), **truth})
    return write_manifest(pd.DataFrame(rows), out_dir / "manifest.csv")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (1 + int(np.argmax(sizes)))


def _equivalent_radius(volume_mm3: float) -> float:
    return float(np.cbrt(3.0 * volume_mm3 / (4.0 * np.pi)))


def measure_phantom(image: np.ndarray, spacing_mm: tuple[float, float, float] | np.ndarray = (SPACING_MM,) * 3
                    ) -> dict[str, float]:
    """Measure the cavity volume and wall thickness of a phantom image directly, from its intensities alone.

    Three intensity classes (background < wall < blood pool, as :func:`phantom` draws them) are
    separated by SimpleITK's multiple-threshold Otsu, so the measure holds in any intensity unit
    (raw scans, or a model's [0, 1] output). The cavity is the largest connected bright
    component; the organ is the largest component above the background, holes filled. The wall
    thickness is the difference of the two equivalent-sphere radii ``(3 V / 4 pi)^(1/3)``: for an
    ellipsoidal shell of semi-axes ``r_i`` and ``r_i + t`` that is ``t`` up to the spread of the
    ``r_i``. A lesion enhances like the blood pool and touches the cavity, so in label-1 phantoms
    it counts towards the cavity (a few hundred mm^3; the traversal check compares steps of one
    subject, where it is constant).

    Args:
        image: ``[X, Y, Z]`` intensities (e.g. one decoded traversal step).
        spacing_mm: voxel size along X, Y, Z.

    Returns:
        ``{"cavity_volume_mm3", "wall_thickness_mm"}`` (0 when the image has no contrast).
    """
    image = np.asarray(image, dtype=np.float32)
    while image.ndim > 3:
        image = image[0]
    if not np.isfinite(image).all() or np.ptp(image) <= 0:
        return {"cavity_volume_mm3": 0.0, "wall_thickness_mm": 0.0}
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(128)
    classes = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(image)))  # 0 background, 1 wall, 2 blood
    voxel_mm3 = float(np.prod(np.asarray(spacing_mm, dtype=np.float64)))
    cavity = _largest_component(classes == 2)
    organ = _largest_component(binary_fill_holes(classes >= 1))
    cavity_mm3 = float(cavity.sum()) * voxel_mm3
    organ_mm3 = float((organ | cavity).sum()) * voxel_mm3
    return {"cavity_volume_mm3": cavity_mm3,
            "wall_thickness_mm": max(0.0, _equivalent_radius(organ_mm3) - _equivalent_radius(cavity_mm3))}
