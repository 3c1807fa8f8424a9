"""The ``data`` config section: every key the data layer reads, with its type, range and default.

Validated once when a config is loaded (:func:`medlatent.config.validate_sections`), so the
pipeline, the records and the checks read values that are already known to be good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medlatent.config import Section

__all__ = ["DataSection", "SplitSection", "TableSpec", "INTENSITY_MODES", "SPATIAL_FITS", "AUGMENTATIONS",
           "CACHE_MODES", "absolutize_paths"]

INTENSITY_MODES = ("percentile", "minmax", "zscore", "none")
SPATIAL_FITS = ("resize", "pad_crop")
AUGMENTATIONS = ("flip", "affine", "rigid", "bias_field", "noise", "rotate90")
CACHE_MODES = ("memory", "disk", "none")


class TableSpec(Section):
    """One attribute table joined to the images: ``{path, id_column, columns?: {new: [source, ...]}}``."""

    path: str
    id_column: str
    columns: dict[str, list[str] | str] | None = None


class SplitSection(Section):
    """``data.split``: fractions of subjects held out for validation and test, and the seed; or, with
    ``folds``, fold ``fold`` of a stratified K-fold cross-validation (``test`` is then unused and
    ``val`` is carved from the training folds)."""

    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    folds: int | None = Field(None, ge=2)
    fold: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fold_in_range(self) -> "SplitSection":
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds}), got {self.fold}")
        return self


class DataSection(Section):
    """``data``: where the scans come from and how they are preprocessed, cached and augmented."""

    # one of: a manifest CSV, a MedMNIST .npz, or an images glob (+ masks glob, tables)
    manifest: str | None = None
    images: str | None = None
    masks: str | None = None
    # multiply each image by its mask (> 0) before anything else: skull-stripping with a brain mask
    mask_image: bool = False
    tables: list[TableSpec] = []
    # crop every volume to its mask's bounding box (> 0) plus this margin in voxels, on the scan's grid:
    # a heart box from the label map for EMIDEC's 256x256 slices
    mask_crop_margin: int | None = Field(None, ge=0)
    # fixed zoom factor per axis after that crop (0.5 = half the voxels); a fixed factor keeps sizes
    # comparable between subjects, which a resize to spatial_size would not
    zoom: list[float] | None = Field(None, min_length=3, max_length=3)
    spatial_size: list[int] = Field([64, 64, 48], min_length=3, max_length=3)
    spatial_fit: Literal[SPATIAL_FITS] = "resize"  # type: ignore[valid-type]
    spacing: float | list[float] | None = None
    intensity: Literal[INTENSITY_MODES] = "percentile"  # type: ignore[valid-type]
    foreground_crop: bool = False
    cache: Literal[CACHE_MODES] = "memory"  # type: ignore[valid-type]
    cache_dir: str | None = None
    split: SplitSection = SplitSection()
    augment: list[Literal[AUGMENTATIONS]] = []  # type: ignore[valid-type]
    attributes: list[str] = []
    label: str | None = None
    drop_missing: bool = False

    @field_validator("spatial_size")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("every size must be a positive integer")
        return value

    @field_validator("zoom")
    @classmethod
    def _positive_zoom(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not v > 0 for v in value):
            raise ValueError("every zoom factor must be positive")
        return value

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = [value] if isinstance(value, (int, float)) else value or []
        if isinstance(value, list) and len(value) != 3:
            raise ValueError("give one spacing in mm or three (one per axis)")
        if any(not v > 0 for v in values):
            raise ValueError("spacing must be positive (mm)")
        return value


def absolutize_paths(data: dict[str, Any]) -> None:
    """Relative data paths are taken from the working directory and stored absolute, in place,
    so that RUN/config.yaml rebuilds the run from anywhere."""
    for key in ("manifest", "images", "masks", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().absolute())
    for table in data.get("tables") or []:
        if table.get("path"):
            table["path"] = str(Path(table["path"]).expanduser().absolute())
