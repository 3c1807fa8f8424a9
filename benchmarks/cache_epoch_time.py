"""Epoch time over the IXI T1 volumes with cache memory / disk / none (the data layer alone, no model).

Every volume is preprocessed as in training (RAS, percentile intensity, resize to 64x64x48) and
batched (batch 4, num_workers 0) through monai.data.DataLoader. The figure that matters for
training is the *second* epoch: memory and disk caches pay the preprocessing once.

    python benchmarks/cache_epoch_time.py [--data DIR] [--modes memory none disk] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader

from medlatent.transforms.pipeline import make_dataset
from medlatent.transforms.records import load_split_records

DEFAULT_DATA = Path(os.environ.get("MEDLATENT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def epoch(loader: DataLoader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["image"].shape[0]
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--modes", nargs="+", default=["memory", "none", "disk"])
    parser.add_argument("--spatial-size", nargs=3, type=int, default=[64, 64, 48])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    ixi = args.data / "ixi_t1_2mm"
    base = {"images": str(ixi / "T1" / "*.nii.gz"), "spatial_size": args.spatial_size, "intensity": "percentile",
            "split": {"val": 0.0, "test": 0.0, "seed": 0}}
    records, info = load_split_records(base)
    records = records["train"]
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for mode in args.modes:
            cfg = {**base, "cache": mode}
            start = time.perf_counter()
            dataset = make_dataset(records, cfg, train=True, cache_dir=Path(cache_dir))
            build = time.perf_counter() - start
            loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=0, shuffle=True)
            first, n = epoch(loader)
            second, _ = epoch(loader)
            rows.append({"cache": mode, "volumes": n, "build_s": round(build, 2), "epoch1_s": round(first, 2),
                         "epoch2_s": round(second, 2), "epoch2_volumes_per_s": round(n / second, 1)})
    print(f"IXI T1, {len(records)} volumes -> {'x'.join(map(str, args.spatial_size))}, batch {args.batch_size}, "
          f"num_workers 0, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print("| cache | build (s) | epoch 1 (s) | epoch 2 (s) | epoch 2 volumes/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cache']} | {r['build_s']} | {r['epoch1_s']} | {r['epoch2_s']} | {r['epoch2_volumes_per_s']} |")
    if args.json:
        from medlatent.io import write_text_atomic

        meta = {"volumes": len(records), "spatial_size": args.spatial_size, "batch_size": args.batch_size,
                "num_workers": 0, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
        write_text_atomic(args.json, json.dumps({"setup": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
