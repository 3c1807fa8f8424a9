"""The training loop: run files, kill-and-resume determinism, and 2-process DDP on CPU."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from medlatent.engine import lr_factor
from medlatent.errors import InputError
from medlatent.runs import load_checkpoint

TOY = Path(__file__).with_name("toy_training.py")


def _load_toy():
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_training", TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_checkpoints_metrics_figures_and_tensorboard(tmp_path):
    toy = _load_toy()
    toy.run(str(tmp_path), epochs=3)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_ssim", "val_psnr", "val_mae", "lr"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert last["epoch"] == 3
    assert best["best"] == max(float(r["val_ssim"]) for r in rows)
    assert (tmp_path / "figures" / "curves.png").stat().st_size > 0
    assert (tmp_path / "figures" / "recon_epoch003.png").stat().st_size > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")], "temporary files left"


def test_lr_factor_schedules():
    assert [lr_factor("cosine", p) for p in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert [lr_factor("step", p) for p in (0.0, 0.34, 0.67, 1.0)] == pytest.approx([1.0, 0.3, 0.09, 0.09])
    assert lr_factor("none", 0.9) == 1.0
    with pytest.raises(InputError, match="train.schedule"):
        lr_factor("linear", 0.5)


class _StepClock:
    """A clock that advances only when a training step "sleeps", so a time budget counts steps, not load."""

    def __init__(self, rate: float = 1.0) -> None:
        self.now = 0.0
        self.rate = rate

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds * self.rate


def test_cosine_anneals_over_the_time_budget_and_the_budget_spans_resume(tmp_path, monkeypatch):
    toy = _load_toy()
    # the engine's clock and the toy's step share a fake clock: on a loaded CPU a real 4-second
    # budget can end inside the first epoch, which says nothing about the schedule
    clock = _StepClock()
    monkeypatch.setattr("medlatent.engine.time", clock)
    monkeypatch.setattr(toy, "time", clock)
    # epochs far too many: only the 4-second budget can drive the schedule, as in the benchmarks
    toy.run(str(tmp_path), epochs=10_000, step_sleep=0.05, schedule="cosine", max_minutes=4 / 60)
    rows = _csv_rows(tmp_path / "metrics.csv")
    rates = [float(r["lr"]) for r in rows]
    assert 2 <= len(rows) < 10_000
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.2 * 3e-3 < rates[0]
    # the run's time, kept for --resume, covers every epoch's training and validation
    seconds = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["train_seconds"]
    assert sum(float(r["epoch_seconds"]) for r in rows) <= seconds < 4.0 + 1

    toy.run(str(tmp_path), resume=True, epochs=10_000, step_sleep=0.05, schedule="cosine", max_minutes=4 / 60)
    assert len(_csv_rows(tmp_path / "metrics.csv")) == len(rows), "a spent budget trained on after --resume"

    toy.run(str(tmp_path), resume=True, epochs=10_000, step_sleep=0.05, schedule="cosine", max_minutes=8 / 60)
    longer = [float(r["lr"]) for r in _csv_rows(tmp_path / "metrics.csv")][len(rows):]
    # the lengthened run restarts at the cosine's midpoint, not at the top
    assert longer and 0.2 * 3e-3 < longer[0] < 0.8 * 3e-3


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "reference"
    reference.mkdir()
    subprocess.run([sys.executable, str(TOY), str(reference), "--epochs", "3"], check=True, env=env)

    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen([sys.executable, str(TOY), str(killed), "--epochs", "3", "--step-sleep", "0.3"], env=env)
    deadline = time.time() + 120
    # the epoch's checkpoint is its last write (after the metrics row and the figures, which can
    # take over a second on a loaded CPU), and it is renamed into place whole
    last = killed / "checkpoints" / "last.pt"
    while time.time() < deadline and not last.exists():
        time.sleep(0.05)
    time.sleep(0.7)  # a couple of steps into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1, "kill did not land mid-epoch 2"

    subprocess.run([sys.executable, str(TOY), str(killed), "--epochs", "3", "--resume"], check=True, env=env)
    expected = torch.load(reference / "final_weights.pt", weights_only=True)
    resumed = torch.load(killed / "final_weights.pt", weights_only=True)
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    assert [r["val_loss"] for r in _csv_rows(killed / "metrics.csv")] == \
        [r["val_loss"] for r in _csv_rows(reference / "metrics.csv")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, train: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    toy = _load_toy()
    if train.get("step_sleep"):
        # step-driven clocks that run at different rates per rank: without the shared clock the
        # ranks would disagree on the rate and the last step (different weights or a hang), and
        # the budget counts steps rather than how loaded the CPU is
        import medlatent.engine

        clock = _StepClock(rate=1.0 + 0.5 * rank)
        medlatent.engine.time = clock
        toy.time = clock
    task = toy.run(run_dir, **train)
    torch.save(task.model.state_dict(), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _ddp_run(tmp_path: Path, train: dict) -> list[dict]:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "run"), str(tmp_path), train), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    initial = _load_toy().ToyAutoencoder()
    assert any(not torch.equal(initial.state_dict()[k], rank0[k]) for k in rank0), "weights never moved"
    return _csv_rows(tmp_path / "run" / "metrics.csv")


def test_two_process_gloo_run_ends_with_identical_weights(tmp_path):
    assert len(_ddp_run(tmp_path, {"epochs": 2})) == 2


def test_two_process_budgeted_cosine_run_keeps_ranks_in_step(tmp_path):
    # each rank's own clock differs (they start apart); the shared clock gives both the same
    # rate at every step and the same last step, or the weights would differ or DDP would hang
    rows = _ddp_run(tmp_path, {"epochs": 10_000, "schedule": "cosine", "max_minutes": 3 / 60, "step_sleep": 0.02})
    assert 2 <= len(rows) < 10_000 and float(rows[-1]["lr"]) < 0.5 * 3e-3
