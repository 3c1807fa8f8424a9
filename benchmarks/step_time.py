"""Seconds per training step of each family's IXI config and of MONAI's VQVAE, per precision and layout, in one run.

One step is the engine's: the family's ``Task.training_step`` (its real loss) under the
precision's autocast, backward, Adam. Inputs are random volumes of the config's size and batch
(the step's time does not depend on the values). Each figure is the median of ``--steps``
steps after ``--warmup`` steps, models built from the same seed. Settings:
``fp32``, ``bf16``, ``fp32_channels_last``, ``bf16_channels_last`` (``--only`` to choose);
a setting this machine cannot run is ``null``. ``auto`` is what ``train.precision: auto`` and
``train.channels_last: auto`` resolve to here.

    python benchmarks/step_time.py [--json OUT] [--steps 5] [--warmup 2] [--models vqvae3d,attrivae,monai_vqvae]
                                   [--clock wall|process] [--compile]

Each step's FLOPs are counted once per setting on the first warm-up step
(``torch.utils.flop_counter.FlopCounterMode``: matrix multiplications and convolutions, forward
and backward), and read against this machine's peak in the same precision, measured in the
same run (benchmarks/hardware_peak.py): the faster of a 2048^2 GEMM and a 3x3x3 convolution in
channels_last_3d (on this CPU oneDNN's convolution outruns torch's GEMM by 1.3-1.5x, so the GEMM
alone is not the limit). Achieved GFLOP/s = FLOPs / median step seconds, and its fraction of that
peak. ``--compile`` also runs every chosen setting through ``torch.compile`` (what
``train.compile: true`` does), in the same run, as ``<setting>_compiled``, and reports each
setting's first step (compilation included) and the compiled step's largest deviation of the loss
from the uncompiled one over the steps (same seed, same batch).

JSON: ``{"cpu": {model, flags, ...}, "bf16_native": bool, "device": ..., "peak_gflops": {"fp32": g, "bf16": g}, "gemm_gflops": {...}, "conv3d_gflops": {...},
"vqvae3d": {"fp32": s, "bf16": s, "fp32_channels_last": s, "bf16_channels_last": s, "auto": "bf16",
"gflop_per_step": g, "gflops_per_s": {setting: g}, "peak_fraction": {setting: f}, "first_step": {setting: s},
"cpu_share": {setting: CPU seconds / (wall seconds x threads)}, with --compile "<setting>_compiled": s and
"compiled_loss_deviation": {setting: relative}},
"attrivae": {...}, "monai_vqvae": {...}}``.

The VQ-VAE's own ``net.channels_last`` (default true) is set to the layout measured, so
``fp32`` here is the model with every tensor in the default layout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medlatent import precision as precision_lib  # noqa: E402 - after the path set-up above
from medlatent.io import write_text_atomic  # noqa: E402

SETTINGS = ("fp32", "bf16", "fp32_channels_last", "bf16_channels_last")
MODELS = ("vqvae3d", "attrivae", "monai_vqvae")


def _config(name: str) -> dict[str, Any]:
    from medlatent.commands.registry import load_config

    return load_config(ROOT / "configs" / f"{name}_ixi.yaml")


def _vqvae3d(channels_last: bool) -> tuple[Any, dict[str, torch.Tensor]]:
    from medlatent.vqvae3d.family import build_task

    cfg = _config("vqvae3d")
    cfg["net"]["channels_last"] = channels_last
    task = build_task(cfg, None, Path("."), {})
    b = int(cfg["train"]["batch_size"])
    return task, {"image": torch.rand(b, 1, *cfg["data"]["spatial_size"])}


def _attrivae(channels_last: bool) -> tuple[Any, dict[str, torch.Tensor]]:
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.family import build_model
    from medlatent.attrivae.task import AttriVAETask

    cfg = _config("attrivae")
    names = list(cfg["data"]["attributes"])
    latent = int(cfg["net"]["latent_dim"])
    amap = AttributeMap(names=names, regularized=names, dims=list(range(len(names))), minimum=[0.0] * len(names),
                        maximum=[1.0] * len(names), latent_dim=latent, label="Sex", classes=["F", "M"],
                        gamma=float(cfg["loss"]["gamma"]))
    task = AttriVAETask(build_model(cfg, amap), amap, cfg["loss"])
    b = int(cfg["train"]["batch_size"])
    batch = {"image": torch.rand(b, 1, *cfg["data"]["spatial_size"]), "attrs": torch.rand(b, len(names)),
             "label": torch.randint(0, 2, (b,))}
    return task, batch


class _MonaiTask:
    """MONAI's VQVAE (the benchmark's, benchmarks/vqvae_vs_monai.py) with the same L1 + quantizer loss."""

    def __init__(self) -> None:
        from vqvae_vs_monai import monai_model

        self.model = monai_model()

    def training_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        from medlatent.vqvae3d.model import reconstruction_loss

        reconstruction, q_loss = model(batch["image"])
        loss = reconstruction_loss(reconstruction.float(), batch["image"], "l1").mean() + q_loss.float()
        return loss, {}


def _monai_vqvae(channels_last: bool) -> tuple[Any, dict[str, torch.Tensor]]:
    cfg = _config("vqvae3d")
    b = int(cfg["train"]["batch_size"])
    return _MonaiTask(), {"image": torch.rand(b, 1, *cfg["data"]["spatial_size"])}


BUILDERS: dict[str, Callable[[bool], tuple[Any, dict[str, torch.Tensor]]]] = {
    "vqvae3d": _vqvae3d, "attrivae": _attrivae, "monai_vqvae": _monai_vqvae}


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


@dataclasses.dataclass
class StepTime:
    """One setting's figures: median seconds per step, FLOPs of one step (None if not counted), first step's seconds,
    and this process's CPU seconds over its wall seconds in the timed steps (about 1.0 per thread on an idle core,
    less where another job shared the core)."""

    seconds: float
    flops: int | None
    first_step: float
    cpu_share: float
    losses: list[float]


def step_seconds(model_name: str, setting: str, device: torch.device, steps: int, warmup: int,
                 clock: str = "wall", compile: bool = False) -> StepTime:
    """Median seconds of one training step of ``model_name`` in ``setting`` on ``device``, and its FLOPs.

    ``clock``: ``wall`` (elapsed) or ``process`` (CPU seconds of this process, all threads: on a
    machine shared with other jobs it counts this job's work, not its waiting). FLOPs are counted on
    the first warm-up step (not with ``compile``: the counter sees a compiled graph's kernels only on
    its first call, which is the compilation).
    """
    now = CLOCKS[clock]
    name, _, layout = setting.partition("_")
    precision = precision_lib.Precision(device.type, name, channels_last=bool(layout))
    torch.manual_seed(0)
    task, batch = BUILDERS[model_name](precision.channels_last)
    model = precision_lib.prepare_model(task.model.to(device), precision).train()
    batch = precision_lib.to_layout({k: v.to(device) for k, v in batch.items()}, precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    stepped = torch.compile(model) if compile else model
    times, flops, first, wall, cpu, losses = [], None, 0.0, 0.0, 0.0, []
    for i in range(warmup + steps):
        counter = FlopCounterMode(display=False) if i == 0 and warmup > 0 and not compile else None
        started, wall_started, cpu_started = now(), time.perf_counter(), time.process_time()
        with counter or contextlib.nullcontext(), precision_lib.autocast(precision):
            loss, _ = task.training_step(stepped, copy.copy(batch))
        with counter or contextlib.nullcontext():
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i == 0:
            first = now() - started
        losses.append(float(loss.detach()))
        if counter is not None:
            flops = counter.get_total_flops()
        if i >= warmup:
            times.append(now() - started)
            wall += time.perf_counter() - wall_started
            cpu += time.process_time() - cpu_started
    if not torch.isfinite(loss):
        raise RuntimeError(f"{model_name} {setting}: non-finite loss {float(loss)}")
    return StepTime(statistics.median(times), flops, first, cpu / wall / torch.get_num_threads(), losses)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--only", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed seconds (default); process: this process's CPU seconds over all "
                             "threads, for a machine shared with other jobs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile: true)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import os

    from hardware_peak import conv3d_gflops, gemm_gflops

    os.chdir(ROOT)  # config data paths are relative to the repository root
    device = torch.device(args.device)
    info = precision_lib.cpu_info()
    auto = precision_lib.resolve({"precision": "auto", "channels_last": "auto"}, device)
    wanted = args.only.split(",")
    dtypes = {name: dtype for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
              if any(s.partition("_")[0] == name for s in wanted)}
    gemm = {name: gemm_gflops(dtype, device) for name, dtype in dtypes.items()}
    conv = {name: conv3d_gflops(dtype, device, channels_last=True) for name, dtype in dtypes.items()}
    peaks = {name: max(gemm[name], conv[name]) for name in dtypes}
    result: dict[str, Any] = {"cpu": info, "bf16_native": info["bf16_native"], "device": str(device),
                              "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
                              "clock": args.clock, "compile": args.compile, "peak_gflops": peaks,
                              "gemm_gflops": gemm, "conv3d_gflops": conv}
    print(f"{info['model']} ({', '.join(info['flags'])}; torch {info['torch_capability']}, {info['threads']} threads) "
          f"on {device}; auto: {auto.describe()}; GFLOP/s GEMM 2048 / conv3d channels_last: "
          + ", ".join(f"{k} {gemm[k]:.1f} / {conv[k]:.1f}" for k in dtypes))
    columns = [*SETTINGS, *(f"{s}_compiled" for s in SETTINGS if args.compile)]
    print(f"{'s/step':<14}" + "".join(f"{s:>20}" for s in columns))
    for model_name in args.models.split(","):
        row: dict[str, Any] = {s: None for s in columns}
        measured = {s: step_seconds(model_name, s.removesuffix("_compiled"), device, args.steps, args.warmup,
                                    args.clock, s.endswith("_compiled"))
                    for s in columns if s.removesuffix("_compiled") in wanted}
        row.update({s: m.seconds for s, m in measured.items()})
        row["auto"] = auto.name + ("_channels_last" if auto.channels_last else "")
        counted = [m.flops for m in measured.values() if m.flops]
        # the same model and batch: one step's FLOPs do not depend on the precision or layout
        row["gflop_per_step"] = max(counted) / 1e9 if counted else None
        row["gflops_per_s"] = {s: row["gflop_per_step"] / m.seconds if counted else None for s, m in measured.items()}
        row["peak_fraction"] = {s: g / peaks[s.partition("_")[0]] if g else None
                                for s, g in row["gflops_per_s"].items()}
        row["first_step"] = {s: m.first_step for s, m in measured.items()}
        row["cpu_share"] = {s: m.cpu_share for s, m in measured.items()}
        result[model_name] = row
        print(f"{model_name:<14}" + "".join(f"{'-' if row[s] is None else format(row[s], '.3f'):>20}"
                                            for s in columns), flush=True)
        if args.compile:
            row["compiled_loss_deviation"] = {
                s: max(abs(a - b) / abs(b) for a, b in zip(measured[f"{s}_compiled"].losses, measured[s].losses))
                for s in SETTINGS if s in measured}
    for model_name in args.models.split(","):
        row = result[model_name]
        if row["fp32"] and row["bf16"]:
            print(f"{model_name}: bf16 / fp32 step time {row['bf16'] / row['fp32']:.2f}")
        if row["fp32_channels_last"] and row["bf16_channels_last"]:
            print(f"{model_name}: channels_last bf16 / fp32 step time "
                  f"{row['bf16_channels_last'] / row['fp32_channels_last']:.2f}")
        if row["gflop_per_step"]:
            print(f"{model_name}: {row['gflop_per_step']:.1f} GFLOP per step; GFLOP/s (fraction of the peak "
                  "of that precision): " + ", ".join(f"{s} {g:.1f} ({row['peak_fraction'][s]:.0%})"
                                                     for s, g in row["gflops_per_s"].items()))
        print(f"{model_name}: CPU seconds / (wall seconds x threads) in the timed steps (< 0.95: the core was "
              "shared) " + ", ".join(f"{s} {c:.2f}" for s, c in row["cpu_share"].items()))
        if args.compile:
            print(f"{model_name}: first step (compilation included) "
                  + ", ".join(f"{s} {t:.1f} s" for s, t in row["first_step"].items()))
            print(f"{model_name}: compiled step's loss, largest relative deviation from uncompiled "
                  + ", ".join(f"{s} {d:.1e}" for s, d in row["compiled_loss_deviation"].items()))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
