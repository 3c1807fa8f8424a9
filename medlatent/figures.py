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

__all__ = ["orthogonal_slices", "save_slice_grid", "save_strip", "save_curves", "save_figure", "save_overlay"]

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


def save_strip(volumes: Sequence[np.ndarray | torch.Tensor], titles: Sequence[str], path: str | os.PathLike,
               title: str | None = None, vmin: float | None = None, vmax: float | None = None) -> None:
    """One column per volume (e.g. traversal steps), rows axial and coronal mid-slices (RAS volumes), as one PNG."""
    columns = len(volumes)
    fig, axes = plt.subplots(2, columns, figsize=(1.6 * columns + 0.4, 3.6), squeeze=False)
    for col, (volume, name) in enumerate(zip(volumes, titles)):
        for row, plane in enumerate(orthogonal_slices(volume)[:2]):
            ax = axes[row, col]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=7)
            if col == 0:
                ax.set_ylabel(VIEWS[row], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
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


# side labels of each view as orthogonal_slices displays it: (left, right, bottom, top)
_SIDES = {"axial": ("L", "R", "P", "A"), "coronal": ("L", "R", "I", "S"), "sagittal": ("P", "A", "I", "S")}


def save_overlay(scan: np.ndarray | torch.Tensor, overlay: np.ndarray | torch.Tensor, path: str | os.PathLike,
                 point: Sequence[int] | None = None, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 title: str | None = None, label: str = "attention", vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = "jet", alpha: float = 0.45) -> None:
    """A scan with a map overlaid on the three orthogonal slices through ``point``, as one PNG.

    Both volumes are RAS-ordered ``[X, Y, Z]`` on the same grid (reorient first, e.g. with
    MONAI ``Orientation(axcodes="RAS")``). Each panel is labelled with the patient directions at
    its edges (L/R, A/P, S/I) and drawn with the voxel aspect ratio of ``spacing``; the map has
    a colorbar. Map values below 5% of ``vmax`` are left transparent so the anatomy stays visible.

    Args:
        scan: ``[X, Y, Z]`` (or ``[1, X, Y, Z]``) intensities; windowed to its 1-99th percentile.
        overlay: same shape, the map (e.g. attention in [0, 1]).
        path: PNG file, written atomically.
        point: voxel ``(x, y, z)`` the slices pass through; default the map's peak.
        spacing: voxel size in mm along X, Y, Z.
        title: figure title.
        label: colorbar label.
    """
    scan_np, map_np = _as_numpy(scan), _as_numpy(overlay)
    if scan_np.shape != map_np.shape:
        raise ValueError(f"scan {scan_np.shape} and overlay {map_np.shape} must have the same shape")
    if point is None:
        point = np.unravel_index(int(np.nanargmax(np.nan_to_num(map_np, nan=-np.inf))), map_np.shape)
    point = [int(np.clip(p, 0, n - 1)) for p, n in zip(point, map_np.shape)]
    lo, hi = np.percentile(scan_np, [1, 99]) if scan_np.size else (0.0, 1.0)
    sx, sy, sz = (float(s) for s in spacing)
    # imshow aspect = height of a pixel / its width, in mm
    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 4.0))
    image = None
    for ax, view, plane, heat in zip(axes, VIEWS, orthogonal_slices(scan_np, point), orthogonal_slices(map_np, point)):
        ax.imshow(plane, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspects[view])
        shown = np.ma.masked_where(~(heat > vmin + 0.05 * (vmax - vmin)), heat)
        image = ax.imshow(shown, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax, alpha=alpha, aspect=aspects[view])
        left, right, bottom, top = _SIDES[view]
        style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.set_title(f"{view} (voxel {point[{'axial': 2, 'coronal': 1, 'sagittal': 0}[view]]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.02, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
