"""EMA vector quantizer: codebook learning, dead-code restarts, usage statistics, DDP reduction."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from medlatent.vqvae3d.quantizer import EMAQuantizer, codes_used_fraction, nearest_codes, perplexity


def _as_map(vectors: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` -> ``[1, C, N, 1, 1]`` (a feature map whose voxels are the rows)."""
    return vectors.t()[None, :, :, None, None].contiguous()


def _ready(num_codes: int, dim: int, codebook: torch.Tensor, **kwargs) -> EMAQuantizer:
    vq = EMAQuantizer(num_codes, dim, **kwargs)
    vq.codebook.copy_(codebook)
    vq.cluster_size.fill_(10.0)
    vq.embed_sum.copy_(codebook * 10.0)
    vq.initialized.fill_(True)
    return vq


def test_nearest_codes_matches_brute_force() -> None:
    torch.manual_seed(0)
    flat, codebook = torch.randn(500, 8), torch.randn(37, 8)
    got = nearest_codes(flat, codebook)
    # brute force by differences in float64, not torch.cdist (whose matrix-product path is off by ~1e-3
    # on AVX512 CPUs): the chosen code is the nearest, up to float32 rounding of one matrix product
    exact = (flat[:, None].double() - codebook[None].double()).pow(2).sum(-1)  # [500, 37]
    assert (exact.gather(1, got[:, None])[:, 0] - exact.min(1).values).max() < 1e-4
    assert (got == exact.argmin(1)).float().mean() > 0.99


def test_ema_update_moves_code_toward_mean_of_assigned_vectors() -> None:
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    vq = _ready(2, 2, codebook, decay=0.9, dead_threshold=0.0).train()
    # all vectors sit near (1, 1): they are assigned to code 0, whose mean is (1, 1)
    vectors = torch.tensor([[0.9, 1.1], [1.1, 0.9], [1.0, 1.0]])
    before = (vq.codebook[0] - torch.tensor([1.0, 1.0])).norm()
    distances = []
    for _ in range(60):
        vq(_as_map(vectors))
        distances.append(float((vq.codebook[0] - torch.tensor([1.0, 1.0])).norm()))
    # monotone approach: the EMA only ever moves the code toward the mean
    assert all(b <= a + 1e-6 for a, b in zip(distances, distances[1:]))
    after = (vq.codebook[0] - torch.tensor([1.0, 1.0])).norm()
    assert after < 0.1 * before
    # the unassigned code stays put: its sum and count decay together (up to the Laplace smoothing)
    assert torch.allclose(vq.codebook[1], torch.tensor([10.0, 10.0]), atol=0.05)


def test_eval_mode_does_not_change_codebook_but_counts_usage() -> None:
    vq = _ready(4, 3, torch.randn(4, 3)).eval()
    snapshot = vq.codebook.clone()
    vq(torch.randn(2, 3, 4, 4, 4))
    assert torch.equal(vq.codebook, snapshot)
    assert vq.usage.sum() == 2 * 64


def test_dead_code_is_restarted_at_an_encoder_output() -> None:
    codebook = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    vq = _ready(2, 2, codebook, decay=0.5, dead_threshold=1.0).train()
    vq.cluster_size[1] = 1.5  # code 1 gets nothing and falls under the threshold after one step
    torch.manual_seed(0)
    vectors = torch.randn(64, 2)
    vq(_as_map(vectors))
    restarted = vq.codebook[1]
    assert (restarted - torch.tensor([100.0, 100.0])).norm() > 50
    # exactly one of the encoder outputs (an exact match, not a cdist distance, which is inexact on AVX512)
    assert (vectors == restarted).all(1).any()


def test_restart_goes_where_the_codebook_serves_the_data_worst() -> None:
    # a scan's feature map: mostly background on one code, a small structure far from every code
    codebook = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    vq = _ready(2, 2, codebook, decay=0.5, dead_threshold=1.0).train()
    vq.cluster_size[1] = 1.5
    torch.manual_seed(0)
    background = 0.01 * torch.randn(990, 2)
    structure = torch.tensor([8.0, -8.0]) + 0.1 * torch.randn(10, 2)
    restarts = []
    for _ in range(20):
        vq.codebook.copy_(codebook)
        vq.cluster_size.copy_(torch.tensor([10.0, 1.5]))
        vq.embed_sum.copy_(codebook * vq.cluster_size[:, None])
        vq(_as_map(torch.cat([background, structure])))
        restarts.append(vq.codebook[1].clone())
    # a uniform draw would pick the background 99% of the time
    on_structure = sum(bool((r - torch.tensor([8.0, -8.0])).norm() < 1.0) for r in restarts)
    assert on_structure >= 18


def test_kmeans_seeding_covers_a_rare_cluster() -> None:
    torch.manual_seed(0)
    common = 0.05 * torch.randn(5000, 2)
    rare = torch.tensor([6.0, 6.0]) + 0.05 * torch.randn(20, 2)
    vq = EMAQuantizer(4, 2, dead_threshold=0.0, kmeans_iters=1).train()
    vq(_as_map(torch.cat([common, rare])))
    assert (vq.codebook - torch.tensor([6.0, 6.0])).norm(dim=1).min() < 0.5


def test_kmeans_initialisation_places_codes_on_the_data() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    vectors = torch.cat([c + 0.1 * torch.randn(200, 2) for c in centres])
    vq = EMAQuantizer(3, 2, dead_threshold=0.0).train()
    vq(_as_map(vectors))
    assert bool(vq.initialized)
    distance = (centres[:, None] - vq.codebook[None]).norm(dim=-1).min(1).values  # [3]
    assert (distance < 0.2).all()


def test_perplexity_uniform_and_single_code() -> None:
    assert perplexity(torch.full((64,), 5.0)) == pytest.approx(64.0)
    single = torch.zeros(64)
    single[3] = 100
    assert perplexity(single) == pytest.approx(1.0)
    assert codes_used_fraction(single) == pytest.approx(1 / 64)


def test_straight_through_gradient_reaches_the_input() -> None:
    vq = _ready(8, 4, torch.randn(8, 4)).train()
    z = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    q, indices, loss = vq(z)
    (q.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert indices.shape == (2, 3, 3, 3)


# --- DDP: two gloo processes ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from medlatent.vqvae3d.model import VQVAE3d
    from medlatent.vqvae3d.task import VQVAETask

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    data = torch.randn(2, 6, 4)  # [rank, N, C]: each rank sees its own vectors
    codebook = torch.randn(5, 4)
    vq = _ready(5, 4, codebook, decay=0.8, dead_threshold=0.0).train()
    vq(_as_map(data[rank]))
    # usage of a whole model, tallied per rank and reduced by the task at the end of an epoch
    torch.manual_seed(1)
    model = VQVAE3d(channels=[8], embedding_dim=4, num_codes=16, num_res_units=1, kmeans_iters=0).eval()
    for q in model.quantizers:
        q.initialized.fill_(True)
    volumes = torch.rand(2, 1, 1, 8, 8, 8)
    task = VQVAETask(model)
    task.epoch_start("train")
    with torch.no_grad():
        model(volumes[rank])
    stats = task.epoch_end("train")
    if rank == 0:
        torch.save({"codebook": vq.codebook, "cluster_size": vq.cluster_size, "stats": stats,
                    "usage": model.quantizers[0].usage}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_statistics_are_reduced_across_ranks(tmp_path) -> None:
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)

    torch.manual_seed(0)
    data = torch.randn(2, 6, 4)
    codebook = torch.randn(5, 4)
    single = _ready(5, 4, codebook, decay=0.8, dead_threshold=0.0).train()
    single(_as_map(data.reshape(12, 4)))  # one process seeing both ranks' vectors
    assert torch.allclose(got["codebook"], single.codebook, atol=1e-6)
    assert torch.allclose(got["cluster_size"], single.cluster_size, atol=1e-6)

    from medlatent.vqvae3d.model import VQVAE3d
    from medlatent.vqvae3d.task import codebook_statistics

    torch.manual_seed(1)
    model = VQVAE3d(channels=[8], embedding_dim=4, num_codes=16, num_res_units=1, kmeans_iters=0).eval()
    torch.manual_seed(0)
    data = torch.randn(2, 6, 4)
    volumes = torch.rand(2, 1, 1, 8, 8, 8)
    model.quantizers[0].reset_usage()
    with torch.no_grad():
        model(volumes.reshape(2, 1, 8, 8, 8))
    assert torch.equal(got["usage"], model.quantizers[0].usage)
    assert got["stats"]["perplexity"] == pytest.approx(codebook_statistics(model)["perplexity"])
