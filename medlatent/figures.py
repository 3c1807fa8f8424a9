"""PNG figures shared by both families: training curves and orthogonal-slice grids."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medlatent.io import atomic_path  # noqa: E402

__all__ = ["orthogonal_slices", "save_slice_grid", "save_curves", "save_figure"]

VIEWS = ("axial", "coronal", "sagittal")


def _as_numpy(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().float().cpu().as_subclass(torch.Tensor).numpy()
    volume = np.asarray(volume, dtype=np.float32)
    while volume.ndim > 3:
        volume = volume[0]
    return volume


def orthogonal_slices(volume: np.ndarray | torch.Tensor, center: Sequence[int] | None = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS-ordered ``[X, Y, Z]`` volume through ``center``.

    Each slice is rotated so that it displays in radiological convention with
    ``origin="lower"``: superior/anterior up.
    """
    volume = _as_numpy(volume)
    cx, cy, cz = center if center is not None else [s // 2 for s in volume.shape]
    return [volume[:, :, cz].T, volume[:, cy, :].T, volume[cx, :, :].T]


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save and close ``fig`` atomically as PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def save_slice_grid(volumes: Sequence[np.ndarray | torch.Tensor], row_titles: Sequence[str], path: str | os.PathLike,
                    title: str | None = None, vmin: float | None = None, vmax: float | None = None) -> None:
    """One row per volume, columns axial / coronal / sagittal mid-slices (RAS volumes)."""
    rows = len(volumes)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows + 0.4), squeeze=False)
    for row, (volume, name) in enumerate(zip(volumes, row_titles)):
        for col, plane in enumerate(orthogonal_slices(volume)):
            ax = axes[row, col]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(VIEWS[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def save_curves(history: Sequence[dict], path: str | os.PathLike, metrics: Sequence[str]) -> None:
    """Train and validation curves per epoch, one panel per metric present in ``history``."""
    present = [m for m in metrics if any(f"train_{m}" in h or f"val_{m}" in h for h in history)]
    if not present:
        return
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3.0), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(axes[0], present):
        for stage in ("train", "val"):
            key = f"{stage}_{metric}"
            values = [h.get(key, np.nan) for h in history]
            if not all(np.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=stage)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
