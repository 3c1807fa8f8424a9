"""medlatent.latent_map: 2D embeddings of feature rows (the whole command is exercised in
tests/vqvae3d/test_family.py on a trained run)."""

from __future__ import annotations

import numpy as np
import pytest

from medlatent.errors import InputError
from medlatent.commands.latent_map import embed_2d


def test_pca_separates_two_clusters() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 6)), rng.normal(6, 1, (20, 6))])
    coords = embed_2d(x, "pca")
    assert coords.shape == (40, 2)
    assert abs(coords[:20, 0].mean() - coords[20:, 0].mean()) > 2


def test_tsne_runs_and_bad_method_is_input_error() -> None:
    x = np.random.default_rng(0).normal(size=(15, 4))
    assert embed_2d(x, "tsne", seed=0).shape == (15, 2)
    with pytest.raises(InputError, match="method"):
        embed_2d(x, "mds")
