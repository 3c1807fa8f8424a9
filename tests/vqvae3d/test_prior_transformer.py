"""The transformer prior: causal in its ordering, cached sampling equals the full pass, MONAI's model underneath."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import VQVAETransformerInferer
from monai.utils.ordering import Ordering

from medlatent.vqvae3d.prior_common import one_thread
from medlatent.vqvae3d.prior_transformer import TransformerPrior, grid_ordering

SHAPE = (3, 4, 5)



@pytest.fixture(autouse=True)
def _single_thread():
    # these models are tiny: on a shared 2-core machine, threading each small op costs 100x
    with one_thread():
        yield

def _model(ordering: str = "raster_scan", **kwargs) -> TransformerPrior:
    torch.manual_seed(0)
    return TransformerPrior(5, SHAPE, dim=16, depth=2, heads=2, ordering=ordering, **kwargs).double().eval()


@pytest.mark.parametrize("ordering", ["raster_scan", "s_curve", "random"])
def test_output_depends_exactly_on_the_earlier_positions(ordering: str) -> None:
    model = _model(ordering)
    rank = torch.empty(60, dtype=torch.long)
    rank[model.order] = torch.arange(60)  # rank[p]: when raster position p is generated
    torch.manual_seed(1)
    codes = torch.randint(0, 5, (1, *SHAPE))
    with torch.no_grad():
        base = model(codes).flatten(2)[0]  # [K, L]
        for j in range(60):
            changed = codes.clone().flatten()
            changed[j] = (changed[j] + 1) % 5
            diff = (model(changed.view_as(codes)).flatten(2)[0] - base).abs().amax(0)  # [L]
            later = rank > rank[j]
            assert diff[~later].max() < 1e-12, f"{ordering}: a position at or before {j} saw code {j}"
            # attention reaches every earlier token: no position is blind to any earlier one
            assert bool((diff[later] > 1e-12).all()), f"{ordering}: a later position ignores code {j}"


def test_raster_scan_is_the_grids_memory_order() -> None:
    assert torch.equal(grid_ordering("raster_scan", SHAPE), torch.arange(60))
    assert torch.equal(grid_ordering("random", SHAPE, seed=3), grid_ordering("random", SHAPE, seed=3))
    with pytest.raises(ValueError, match="ordering"):
        grid_ordering("zigzag", SHAPE)


@pytest.mark.parametrize("ordering", ["raster_scan", "random"])
def test_cached_and_uncached_logits_agree(ordering: str) -> None:
    model = _model(ordering, num_classes=3, context_codes=4)
    codes = torch.randint(0, 5, (2, *SHAPE))
    labels, context = torch.tensor([0, 2]), torch.randint(0, 4, (2, 2, 2, 3))
    with torch.no_grad():
        full = model(codes, labels, context)
    cached = model.cached_logits(codes, labels, context)
    torch.testing.assert_close(cached, full, atol=1e-9, rtol=1e-9)


def test_the_network_is_monais_decoder_only_transformer() -> None:
    # MONAI's own forward on [start, codes...] gives our logits: the cache runs MONAI's weights
    model = _model()
    codes = torch.randint(0, 5, (2, *SHAPE))
    start = torch.full((2, 1), 5)
    with torch.no_grad():
        ours = model(codes).flatten(2).transpose(1, 2)  # [B, L, K]
        theirs = model.net(torch.cat([start, codes.flatten(1)[:, :-1]], 1))[..., :5]
    torch.testing.assert_close(ours, theirs)
    # and MONAI's inferer can sample from it (what benchmarks/prior_sampling.py times)

    class _Decoder:
        num_embeddings = 5

        def decode_samples(self, z: torch.Tensor) -> torch.Tensor:
            return z

    order = Ordering("raster_scan", spatial_dims=3, dimensions=(1, *SHAPE))
    grid = VQVAETransformerInferer().sample(SHAPE, start, _Decoder(), model.net.float(), order, verbose=False)
    assert grid.shape == (2, *SHAPE)


def test_sampling_is_reproducible_and_conditioned() -> None:
    model = _model(num_classes=2)
    labels = torch.tensor([0, 1, 0])
    a = model.sample(3, labels, generator=torch.Generator().manual_seed(3))
    b = model.sample(3, labels, generator=torch.Generator().manual_seed(3))
    assert a.shape == (3, *SHAPE) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 5
    with pytest.raises(ValueError, match="class-conditional"):
        model.sample(1)


def test_label_conditioning_is_learned() -> None:
    torch.manual_seed(0)
    model = TransformerPrior(6, (2, 2, 2), dim=16, depth=1, heads=2, num_classes=2)
    labels = torch.tensor([0, 1] * 4)
    codes = torch.randint(0, 6, (8, 2, 2, 2))
    codes[:, 0, 0, 0] = 5 * labels  # the first code is predictable from the label alone
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(model(codes, labels), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert torch.equal(model(codes, labels)[:, :, 0, 0, 0].argmax(1), codes[:, 0, 0, 0])
    assert torch.equal(model.sample(8, labels, top_k=1)[:, 0, 0, 0], 5 * labels)


def test_checkpoint_holds_no_causal_mask() -> None:
    # MONAI's SABlock registers an L x L mask; the flash path does not use it, so it is dropped
    model = TransformerPrior(8, (8, 8, 6), dim=16, depth=2, heads=2)
    assert not any("causal_mask" in key for key in model.state_dict())
