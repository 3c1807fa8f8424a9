"""2D maps of pooled latents: one or several data sets through a run's encoder, embedded and plotted.

The run's family supplies the pooled features of each scan (``Family.features``, through
``medlatent.commands.encode.encode_features``); they are standardised and embedded with PCA (default), t-SNE
(scikit-learn) or UMAP (``umap-learn``, if installed), then coloured by a manifest column or
by data set. The coordinates are written next to the picture as CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlatent.errors import InputError
from medlatent.io import write_text_atomic

__all__ = ["latent_map", "embed_2d"]

METHODS = ("pca", "tsne", "umap")


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Standardise ``features [N, F]`` and embed them in 2D: ``[N, 2]``."""
    from sklearn.preprocessing import StandardScaler

    if method not in METHODS:
        raise InputError(f"--method: unknown {method!r}; choose one of {list(METHODS)}")
    if features.shape[0] < 3:
        raise InputError(f"a latent map needs at least 3 subjects, got {features.shape[0]}")
    x = StandardScaler().fit_transform(features)
    x = np.nan_to_num(x)  # constant features standardise to NaN-free zeros
    if method == "pca":
        from sklearn.decomposition import PCA

        coords = PCA(n_components=min(2, x.shape[1]), random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        coords = TSNE(n_components=2, perplexity=min(30.0, (x.shape[0] - 1) / 3), random_state=seed,
                      init="pca").fit_transform(x)
    else:
        try:
            import umap
        except ImportError:
            raise InputError("--method umap needs the umap-learn package (pip install umap-learn)") from None
        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    if coords.shape[1] == 1:
        coords = np.concatenate([coords, np.zeros_like(coords)], axis=1)
    return coords


def _dataset_names(manifests: list[Path]) -> list[str]:
    # the file stem, or the folder name when stems repeat (every manifest is "manifest.csv")
    stems = [m.stem for m in manifests]
    if len(set(stems)) == len(stems):
        return stems
    names = [f"{m.parent.name}/{m.stem}" for m in manifests]
    return names if len(set(names)) == len(names) else [f"{i}:{n}" for i, n in enumerate(names)]


def latent_map(run: str | Path, manifests: list[str | Path], output: str | Path, color: str | None = None,
               method: str = "pca", seed: int = 0) -> pd.DataFrame:
    """Embed the pooled latents of every subject in ``manifests`` and plot them.

    Args:
        run: a trained run of any family.
        manifests: one or more manifest CSVs.
        output: PNG path; the coordinates go to the same path with ``.csv``.
        color: manifest column to colour by (default: the data set each subject came from).
        method: ``pca``, ``tsne`` or ``umap``.
        seed: seed of the embedding.

    Returns:
        DataFrame ``subject, dataset, x, y`` (+ the colour column).
    """
    from medlatent.commands.encode import encode_features
    from medlatent.figures import save_figure
    from medlatent.transforms.manifest import read_manifest

    if method not in METHODS:
        raise InputError(f"--method: unknown {method!r}; choose one of {list(METHODS)}")
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise InputError(f"{output}: the latent map is written as PNG; name a .png file")
    manifests = [Path(m) for m in manifests]
    frames, feature_columns = [], None
    for name, manifest in zip(_dataset_names(manifests), manifests):
        table = read_manifest(manifest)
        if color is not None and color != "dataset" and color not in table.columns:
            raise InputError(f"--color: column '{color}' not in {manifest} (columns: {list(table.columns)})")
        features = encode_features(run, manifest)
        feature_columns = feature_columns or [c for c in features.columns if c != "subject"]
        frame = features[["subject"] + feature_columns].copy()
        frame.insert(1, "dataset", name)
        if color is not None and color != "dataset":
            frame = frame.merge(table[["subject", color]].drop_duplicates("subject"), on="subject", how="left")
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    coords = embed_2d(data[feature_columns].to_numpy(dtype=np.float64), method, seed)
    key = color or "dataset"
    result = data[["subject", "dataset"] + ([key] if key != "dataset" else [])].copy()
    result["x"], result["y"] = coords[:, 0], coords[:, 1]
    write_text_atomic(output.with_suffix(".csv"), result.to_csv(index=False))
    _plot(result, key, method, save_figure, output)
    print(f"wrote {output} and {output.with_suffix('.csv')} ({len(result)} subjects)")
    return result


def _plot(result: pd.DataFrame, key: str, method: str, save_figure: Any, output: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    values = result[key]
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > 10
    if numeric:
        points = ax.scatter(result["x"], result["y"], c=values, cmap="viridis", s=18)
        fig.colorbar(points, ax=ax, label=key)
    else:
        for value, group in result.groupby(values.astype(str), sort=True):
            ax.scatter(group["x"], group["y"], s=18, label=value)
        ax.legend(title=key, fontsize=8, markerscale=1.2)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"latent map ({len(result)} subjects)")
    save_figure(fig, output)
