"""Where commands write: never over an input, never over an existing file without ``--overwrite``,
volumes back in the geometry of the scan they came from."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from medlatent.errors import InputError
from medlatent.nifti import write_nifti

__all__ = ["NIFTI_SUFFIXES", "check_outputs", "check_output_folder", "check_nifti_name", "write_volume"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                  option: str = "the output") -> None:
    """InputError, before anything is written, when an output is an input or (without ``overwrite``) exists.

    ``option`` names the argument the outputs came from (``OUTPUT``, ``-o``) in the message.
    """
    sources = [Path(p).expanduser() for p in inputs if p]
    for output in outputs:
        output = Path(output).expanduser()
        for source in sources:
            if output.resolve() == source.resolve() or _same_file(output, source):
                raise InputError(f"{option} {output} is the input {source}; refusing to write over an input")
        if output.is_dir():
            raise InputError(f"{option} {output} is a folder; give a file name")
        if output.exists() and not overwrite:
            raise InputError(f"{option} {output} already exists; pass --overwrite to replace it")


def check_output_folder(folder: str | Path, files: Iterable[str], inputs: Iterable[str | Path | None] = (),
                        overwrite: bool = False, option: str = "-o") -> Path:
    """Check ``folder`` can take ``files`` (names relative to it); returns it as a Path, not yet created.

    InputError when ``folder`` is an existing file, one of ``files`` already exists (without
    ``overwrite``) or is an input.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is an existing file; give a folder to write into")
    check_outputs([folder / name for name in files], inputs, overwrite, option=f"{option} {folder}: file")
    return folder


def check_nifti_name(path: str | Path, option: str = "OUTPUT") -> None:
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"{option} {path}: must end in .nii or .nii.gz (volumes are written as NIfTI)")


def write_volume(volume: torch.Tensor, item: Mapping[str, Any], data_cfg: Mapping[str, Any], path: str | Path,
                 mode: str = "bilinear", value_range: tuple[float, float] | None = None) -> Any:
    """A model-space ``[1, D, H, W]`` volume mapped onto the input file's grid and affine, written as NIfTI.

    Returns the mapped ``MetaTensor [1, X, Y, Z]``. ``mode``: ``bilinear`` for images and maps,
    ``nearest`` for label maps. ``value_range``: clip to it after resampling (NaN -> the low end),
    for maps whose values have a meaning only in that range.
    """
    from medlatent.transforms.pipeline import to_input_geometry

    mapped = to_input_geometry(volume.detach().cpu().float(), item, data_cfg, mode=mode)
    if value_range is not None:
        low, high = value_range
        mapped = type(mapped)(torch.nan_to_num(mapped.as_tensor(), nan=low).clamp(low, high), meta=mapped.meta)
    write_nifti(mapped, path)
    return mapped
