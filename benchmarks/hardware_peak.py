"""Measured peak of this machine: fp32 and bf16 GEMM GFLOP/s (2048^2) and 3D convolution GFLOP/s, in one run.

The physical limit the step-time figures are read against (benchmarks/step_time.py,
benchmarks/vqvae_vs_monai.py). Each figure is the best of ``--repeats`` timed calls after a
warm-up, with torch's threads as set (``torch.get_num_threads()``).

    python benchmarks/hardware_peak.py [--json OUT] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from medlatent.precision import cpu_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """``n x n @ n x n`` in ``dtype``: ``2 n^3`` flops per call."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9


def conv3d_gflops(dtype: torch.dtype, device: torch.device, repeats: int = 5, channels_last: bool = False) -> float:
    """A 3x3x3 convolution, 64 -> 64 channels on ``[4, 64, 32, 32, 24]`` (a VQ-VAE encoder stage at batch 4)."""
    x = torch.randn(4, 64, 32, 32, 24, device=device).to(dtype)
    w = torch.randn(64, 64, 3, 3, 3, device=device).to(dtype)
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last_3d), w.contiguous(memory_format=torch.channels_last_3d)
    flops = 2 * x.shape[0] * 64 * 64 * 27 * x.shape[2] * x.shape[3] * x.shape[4]
    return flops / best_seconds(lambda: F.conv3d(x, w, padding=1), device, repeats) / 1e9


def measure(device: torch.device, repeats: int = 5) -> dict:
    """``{"gemm_2048": {fp32, bf16}, "conv3d": {fp32, bf16, fp32_channels_last, bf16_channels_last}}`` in GFLOP/s."""
    result: dict = {"gemm_2048": {}, "conv3d": {}}
    for name, dtype in DTYPES.items():
        result["gemm_2048"][name] = gemm_gflops(dtype, device, repeats=repeats)
        result["conv3d"][name] = conv3d_gflops(dtype, device, repeats)
        result["conv3d"][f"{name}_channels_last"] = conv3d_gflops(dtype, device, repeats, channels_last=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    info = cpu_info()
    figures = measure(device, args.repeats)
    out = {"cpu": info, "device": str(device), "torch": torch.__version__,
           "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None, **figures,
           "bf16_over_fp32": {k: figures[k]["bf16"] / figures[k]["fp32"] for k in ("gemm_2048", "conv3d")}}
    print(f"{info['model']} ({', '.join(info['flags'])}; torch {info['torch_capability']}, {info['threads']} threads)"
          f" on {device}")
    print(f"{'GFLOP/s':<22}{'fp32':>10}{'bf16':>10}{'bf16/fp32':>11}")
    for key in ("gemm_2048", "conv3d"):
        row = figures[key]
        print(f"{key:<22}{row['fp32']:>10.1f}{row['bf16']:>10.1f}{row['bf16'] / row['fp32']:>11.2f}")
    row = figures["conv3d"]
    print(f"{'conv3d channels_last':<22}{row['fp32_channels_last']:>10.1f}{row['bf16_channels_last']:>10.1f}"
          f"{row['bf16_channels_last'] / row['fp32_channels_last']:>11.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
