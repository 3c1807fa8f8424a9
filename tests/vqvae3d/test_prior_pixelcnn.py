"""The 3D gated PixelCNN: causal over the whole grid with no blind spot, exact staged sampler, conditioning."""

from __future__ import annotations

import pytest
import torch

from medlatent.vqvae3d.prior_common import one_thread
from medlatent.vqvae3d.prior_pixelcnn import GatedLayer3d, PixelCNN3d

SHAPE = (3, 4, 5)  # small enough to perturb every position; 6 layers of kernel 3 reach across it



@pytest.fixture(autouse=True)
def _single_thread():
    # these models are tiny: on a shared 2-core machine, threading each small op costs 100x
    with one_thread():
        yield

def _model(**kwargs) -> PixelCNN3d:
    torch.manual_seed(0)
    return PixelCNN3d(5, SHAPE, channels=8, layers=6, kernel=3, **kwargs).eval()


def _dependency(model: PixelCNN3d, labels=None, context=None) -> torch.Tensor:
    """``dep[i, j]``: does the output at raster position i change when the code at position j changes?"""
    torch.manual_seed(1)
    codes = torch.randint(0, 5, (1, *SHAPE))
    length = codes.numel()
    with torch.no_grad():
        base = model(codes, labels, context).flatten(2)[0]  # [K, L]
        dep = torch.zeros(length, length, dtype=torch.bool)
        for j in range(length):
            changed = codes.clone().flatten()
            changed[j] = (changed[j] + 1) % 5
            out = model(changed.view_as(codes), labels, context).flatten(2)[0]
            diff = (out - base).abs().amax(0)  # [L]
            assert diff[: j + 1].max() == 0, f"output at positions <= {j} changed when code {j} changed"
            dep[:, j] = diff > 0
    return dep


def test_causal_without_blind_spot_over_the_whole_grid() -> None:
    dep = _dependency(_model())
    length = dep.shape[0]
    earlier = torch.tril(torch.ones(length, length, dtype=torch.bool), diagonal=-1)
    assert not (dep & ~earlier).any()  # never a later or the same position
    missing = (earlier & ~dep).nonzero().tolist()
    # every earlier position is seen: the first voxel of each row and slice included
    assert not missing, f"blind spots (output, input): {missing[:10]}"


def test_causal_when_conditioned_on_label_and_top_grid() -> None:
    model = _model(num_classes=3, context_codes=4)
    dep = _dependency(model, labels=torch.tensor([2]), context=torch.randint(0, 4, (1, 2, 2, 3)))
    assert not (dep & ~torch.tril(torch.ones_like(dep), diagonal=-1)).any()


def test_staged_sampler_computes_the_same_logits_as_the_full_pass() -> None:
    # float64: the staged and full passes convolve differently shaped inputs, whose float32 sums may
    # round differently from one CPU's kernels to another's; in float64 they agree far below 1e-9
    model = _model(num_classes=2, context_codes=4).double()
    codes = torch.randint(0, 5, (2, *SHAPE))
    labels, context = torch.tensor([0, 1]), torch.randint(0, 4, (2, 2, 2, 3))
    with torch.no_grad():
        full = model(codes, labels, context)
    staged = model.staged_logits(codes, labels, context)
    assert staged.shape == (2, 5, *SHAPE)
    torch.testing.assert_close(staged, full.to(staged.dtype), atol=1e-9, rtol=1e-9)


def test_sampling_is_reproducible_and_in_range() -> None:
    model = _model(num_classes=2)
    labels = torch.tensor([0, 1, 1])
    a = model.sample(3, labels, generator=torch.Generator().manual_seed(7))
    b = model.sample(3, labels, generator=torch.Generator().manual_seed(7))
    c = model.sample(3, labels, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, *SHAPE) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 5
    greedy = model.sample(2, labels[:2], top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, model.sample(2, labels[:2], top_k=1, generator=torch.Generator().manual_seed(2)))


def test_label_and_top_grid_conditioning_are_learned() -> None:
    # the first code of a grid has no earlier codes: only the label (first grid) or the
    # top-level context (second grid) can predict it
    torch.manual_seed(0)
    shape = (2, 2, 3)
    model = PixelCNN3d(6, shape, channels=16, layers=2, kernel=3, num_classes=2, context_codes=3)
    labels = torch.tensor([0, 1] * 4)
    top = torch.randint(0, 3, (8, 1, 1, 2))
    codes = torch.randint(0, 6, (8, *shape))
    codes[:, 0, 0, 0] = 3 * labels + top[:, 0, 0, 0] % 2  # depends on label and top grid only
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(codes, labels, top), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        first = model(codes, labels, top)[:, :, 0, 0, 0].argmax(1)
    assert torch.equal(first, codes[:, 0, 0, 0])


def test_even_kernel_is_rejected() -> None:
    with pytest.raises(ValueError, match="odd"):
        GatedLayer3d(4, 2, first=True)
