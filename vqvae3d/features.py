"""Per-subject latent features of a VQ-VAE: pooled pre/post-quantization features and code-usage summaries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medlatent.io import atomic_path, child_path
from medlatent.vqvae3d.model import VQVAE3d
from medlatent.vqvae3d.quantizer import perplexity

__all__ = ["volume_features", "encode_manifest"]


def _level_names(model: VQVAE3d) -> list[str]:
    return ["z"] if model.levels == 1 else ["top", "bottom"]


@torch.no_grad()
def volume_features(model: VQVAE3d, x: torch.Tensor) -> tuple[dict[str, float], list[np.ndarray]]:
    """Features of one volume.

    Args:
        model: a VQ-VAE in eval mode.
        x: ``[1, 1, D, H, W]``.

    Returns:
        ``(features, grids)``. ``features`` per level L (``z``, or ``top``/``bottom``):
        ``pre_L_j``/``post_L_j`` (mean over the code grid of channel j of the features before
        and after quantization, j < E), ``codes_L_distinct`` (distinct codes in the grid),
        ``codes_L_perplexity`` and ``codes_L_top_frac`` (share of the grid taken by the most
        frequent code). ``grids`` are the ``[d, h, w]`` int64 code grids, top first.
    """
    features: dict[str, float] = {}
    grids: list[np.ndarray] = []
    pre = model.encode(x)
    for name, z, vq in zip(_level_names(model), pre, model.quantizers):
        q, idx = vq.codes_for(z)
        for prefix, tensor in (("pre", z), ("post", q)):
            pooled = tensor.float().mean(dim=(2, 3, 4))[0]  # [E]
            features.update({f"{prefix}_{name}_{j}": float(v) for j, v in enumerate(pooled)})
        counts = torch.bincount(idx.flatten(), minlength=vq.num_codes)
        features[f"codes_{name}_distinct"] = int((counts > 0).sum())
        features[f"codes_{name}_perplexity"] = perplexity(counts)
        features[f"codes_{name}_top_frac"] = float(counts.max() / counts.sum())
        grids.append(idx[0].cpu().numpy())
    return features, grids


def encode_manifest(model: VQVAE3d, data_cfg: Mapping[str, Any], manifest: str | Path,
                    codes_dir: str | Path | None = None) -> pd.DataFrame:
    """``volume_features`` of every manifest row as a DataFrame (``subject`` first).

    With ``codes_dir``, writes ``SUBJECT.npy`` (flat) or ``SUBJECT_top.npy`` and
    ``SUBJECT_bottom.npy`` (two levels), int16 code grids.

    Raises:
        InputError: the manifest is unreadable, or a row's image is missing or not a 3D
            volume (names the manifest, row and file).
    """
    from medlatent.transforms.pipeline import iter_manifest_volumes

    rows = []
    for row, item in iter_manifest_volumes(manifest, data_cfg):
        features, grids = volume_features(model, item["image"].as_tensor()[None])
        rows.append({"subject": row["subject"], **features})
        if codes_dir is not None:
            suffixes = [""] if model.levels == 1 else ["_top", "_bottom"]
            for suffix, grid in zip(suffixes, grids):
                with atomic_path(child_path(codes_dir, row["subject"], f"{suffix}.npy"), suffix=".npy") as tmp:
                    np.save(tmp, grid.astype(np.int16 if max(model.num_codes) < 2**15 else np.int32))
    return pd.DataFrame(rows)
