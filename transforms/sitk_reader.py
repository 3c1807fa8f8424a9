"""A MONAI ``ImageReader`` backed by SimpleITK, for NRRD, MHA/MHD and the other ITK formats.

MONAI's own ``ITKReader`` needs the ``itk`` package and ``NrrdReader`` needs ``pynrrd``;
neither is a medlatent dependency, while SimpleITK is. This reader is written by hand
(about 60 lines) and mirrors ``ITKReader``: the array comes back in (x, y, z) order and the
affine is converted from ITK's LPS world to the RAS world MONAI and nibabel use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

# suffixes this reader claims; NIfTI stays with nibabel (faster, keeps scl_slope as float).
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img", ".gipl", ".gipl.gz", ".vtk")


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """The (n+1)x(n+1) voxel (x, y, z) -> RAS mm affine of an n-D SimpleITK image (4x4 for 3D)."""
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:ndim, ndim] = image.GetOrigin()
    # ITK's world is LPS; negating the first two world axes gives RAS.
    flip = np.eye(ndim + 1)
    flip[0, 0] = -1.0
    if ndim >= 2:
        flip[1, 1] = -1.0
    return flip @ affine


class SimpleITKReader(ImageReader):
    """Read any file SimpleITK understands into a channel-last (x, y, z[, c]) array + RAS meta."""

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(str(f).lower().endswith(SITK_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[sitk.Image] | sitk.Image:
        images = [sitk.ReadImage(str(Path(f).expanduser())) for f in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        # not ensure_tuple: a SimpleITK image is itself iterable (over its pixels)
        for image in img if isinstance(img, (list, tuple)) else [img]:
            # GetArrayFromImage gives (z, y, x[, c]); reverse the spatial axes to (x, y, z[, c]).
            array = sitk.GetArrayFromImage(image)
            ndim = image.GetDimension()
            vector = image.GetNumberOfComponentsPerPixel() > 1
            array = np.transpose(array, tuple(reversed(range(ndim))) + ((ndim,) if vector else ()))
            affine = sitk_affine_ras(image)
            header = {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if vector else float("nan"),
                "spacing": np.asarray(image.GetSpacing()),
            }
            arrays.append(array)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta
