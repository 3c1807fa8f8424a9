"""VQVAE3d: shapes of every stage, flat and two-level, and the index-grid round trip."""

from __future__ import annotations

import pytest
import torch

from medlatent.vqvae3d.model import VQVAE3d


@pytest.mark.parametrize("levels", [1, 2])
def test_stages_shapes_and_index_round_trip(levels: int) -> None:
    torch.manual_seed(0)
    model = VQVAE3d(channels=[16], embedding_dim=8, num_codes=32, num_res_units=1, levels=levels)
    x = torch.rand(2, 1, 32, 32, 16)
    model.train()
    reconstruction, loss, indices = model(x)
    assert reconstruction.shape == x.shape and loss.ndim == 0
    model.eval()
    features = model.encode(x)
    grids = model.encode_indices(x)
    expected = [(2, 8, 8, 4)] if levels == 1 else [(2, 4, 4, 2), (2, 8, 8, 4)]
    assert [tuple(g.shape) for g in grids] == expected
    assert [tuple(f.shape[2:]) for f in features] == [e[1:] for e in expected]
    assert all(f.shape[1] == 8 for f in features) and all(g.dtype == torch.int64 for g in grids)
    assert model.num_codes == [32] * levels
    assert model.grid_shapes((32, 32, 16)) == [e[1:] for e in expected]
    with torch.no_grad():
        quantized, quantize_indices, _ = model.quantize(features)
        direct = model.decode(quantized)
        via_indices = model.decode_indices(grids)
        forward, _, forward_indices = model(x)
    assert all(torch.equal(a, b) for a, b in zip(quantize_indices, grids))
    assert all(torch.equal(a, b) for a, b in zip(forward_indices, grids))
    assert torch.allclose(direct, via_indices, atol=1e-5) and torch.allclose(forward, via_indices, atol=1e-5)


def test_gradients_reach_the_encoder() -> None:
    model = VQVAE3d(channels=[8], embedding_dim=4, num_codes=8, num_res_units=1).train()
    x = torch.rand(1, 1, 16, 16, 16)
    reconstruction, loss, _ = model(x)
    ((reconstruction - x).pow(2).mean() + loss).backward()
    assert model.encoder.stem.weight.grad.abs().sum() > 0


def test_bad_shapes_are_rejected() -> None:
    model = VQVAE3d(channels=[8], embedding_dim=4, num_codes=8, num_res_units=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 1, 18, 16, 16))
    with pytest.raises(ValueError, match="expected"):
        model(torch.rand(1, 16, 16, 16))
    with pytest.raises(ValueError, match="levels"):
        VQVAE3d(levels=3)
