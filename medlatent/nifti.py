"""The one NIfTI writer: a volume and its affine to ``.nii.gz``, atomically."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import torch

from medlatent.io import atomic_path

__all__ = ["write_nifti"]


def write_nifti(volume: np.ndarray | torch.Tensor, path: str | os.PathLike, affine: np.ndarray | torch.Tensor | None = None,
                dtype: type = np.float32) -> None:
    """Write ``volume`` as NIfTI.

    Args:
        volume: ``[D, H, W]`` or ``[1, D, H, W]``; a MONAI ``MetaTensor`` brings its own affine.
        path: output file (``.nii`` or ``.nii.gz``); written under a temporary name, then renamed.
        affine: 4x4 voxel-to-world (RAS mm) matrix; default the MetaTensor's, else identity.
        dtype: stored data type.
    """
    if affine is None:
        affine = getattr(volume, "affine", None)
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().as_subclass(torch.Tensor).numpy()
    volume = np.asarray(volume)
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    if volume.ndim != 3:
        raise ValueError(f"write_nifti expects a 3D volume, got shape {volume.shape}")
    if affine is None:
        affine = np.eye(4)
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    image = nib.Nifti1Image(volume.astype(dtype), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
