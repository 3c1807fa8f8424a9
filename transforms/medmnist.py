"""MedMNIST 3D ``.npz`` files (official layout), read directly with NumPy and converted to NIfTI.

The ``medmnist`` package is not needed: its files are plain ``np.savez`` archives with keys
``{train,val,test}_{images,labels}``, images ``uint8 [N, D, H, W]`` and labels ``[N, 1]``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from medlatent.errors import InputError
from medlatent.nifti import write_nifti
from medlatent.transforms.manifest import write_manifest
from medlatent.transforms.splits import SPLITS

# MedMNIST volumes are binary-like shape masks stored as 0..255; this is the mask threshold
MASK_THRESHOLD = 127


def load_npz(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST 3D npz.

    Returns:
        ``{"train"|"val"|"test": (images uint8 [N, D, H, W], labels int64 [N])}``.

    Raises:
        InputError: missing/unreadable file, missing keys, or arrays of the wrong shape (names the file and key).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"MedMNIST file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz archive: {err}") from None
    out = {}
    with archive:
        for split in SPLITS:
            for kind in ("images", "labels"):
                if f"{split}_{kind}" not in archive.files:
                    raise InputError(f"{path}: missing key '{split}_{kind}' (keys: {sorted(archive.files)})")
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
            if images.ndim == 5 and images.shape[-1] == 1:
                images = images[..., 0]  # some MedMNIST+ files carry a trailing channel axis
            if images.ndim != 4:
                raise InputError(f"{path}: key '{split}_images' has shape {images.shape}, expected [N, D, H, W]")
            labels = np.asarray(labels).reshape(len(labels), -1)
            if labels.shape != (len(images), 1):
                raise InputError(f"{path}: key '{split}_labels' has shape {labels.shape}, expected [{len(images)}, 1]")
            out[split] = (images.astype(np.uint8, copy=False), labels[:, 0].astype(np.int64))
    return out


def _write_nifti(array: np.ndarray, path: Path) -> None:
    # identity affine: 1 mm voxels with array axes = RAS, matching how records.py feeds npz arrays
    write_nifti(array, path, np.eye(4), dtype=array.dtype)


def npz_to_nifti(npz: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write every volume of a MedMNIST npz as NIfTI, with masks and a manifest.

    Layout: ``out_dir/images/<split>_<i>.nii.gz`` (uint8), ``out_dir/masks/<split>_<i>.nii.gz``
    (uint8, image > 127), ``out_dir/manifest.csv`` (subject, image, mask, label, split; relative paths).
    The npz is read and validated before anything is written; each file is written atomically and
    the manifest last, so a manifest exists only once every file it names does.

    Returns:
        The manifest path.
    """
    data = load_npz(npz)
    out_dir = Path(out_dir).expanduser()
    rows = []
    for split in SPLITS:
        images, labels = data[split]
        width = max(4, len(str(len(images))))
        for i, (volume, label) in enumerate(zip(images, labels)):
            subject = f"{split}_{i:0{width}d}"
            image_rel, mask_rel = f"images/{subject}.nii.gz", f"masks/{subject}.nii.gz"
            _write_nifti(volume, out_dir / image_rel)
            _write_nifti((volume > MASK_THRESHOLD).astype(np.uint8), out_dir / mask_rel)
            rows.append({"subject": subject, "image": image_rel, "mask": mask_rel, "label": int(label), "split": split})
    return write_manifest(pd.DataFrame(rows), out_dir / "manifest.csv")
