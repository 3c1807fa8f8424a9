"""Quality at equal epochs in fp32 and bf16: each family's IXI config trained twice from the same seed.

The issue's bound: bf16 must not move quality. Each family's IXI config is trained once with
``train.precision=fp32`` and once with ``train.precision=bf16``, from the same seed, for the same
``--epochs`` (the time budget off, so both runs train every epoch and anneal the same schedule),
through ``medlatent train``'s command layer; each run's last checkpoint is then evaluated on the
validation split by ``medlatent evaluate`` (fp32 on CPU in both cases, so only the trained weights
differ). Figures: the VQ-VAE's validation SSIM (target |bf16 - fp32| <= 0.01) and the Attri-VAE's
tied-dim Spearman per regularised attribute (each attribute against its own latent dim; target
|bf16 - fp32| <= 0.02), with each run's seconds per epoch. Both precisions of a family share one
disk cache of the preprocessed volumes, so they read identical inputs.

    python benchmarks/precision_quality.py [--family vqvae3d|attrivae|both] [--epochs N] [--out DIR] [--json OUT]
                                           [--seed S --precisions bf16]

``--seed S`` (another ``train.seed``) with ``--precisions`` trains only those runs, stored in the JSON
as ``{family}_seed{S}``: the seed-to-seed spread in one precision is the noise floor that the
bf16 - fp32 difference is read against.

``--json OUT`` keeps the other family's entry if OUT already holds one, so the families can be
run one at a time. A run folder that already has ``checkpoints/last.pt`` is evaluated, not retrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medlatent.io import write_text_atomic  # noqa: E402 - after the path set-up above

PRECISIONS = ("fp32", "bf16")
# family -> (config, default epochs, figure, target |bf16 - fp32|)
FAMILIES: dict[str, tuple[Path, int, str, float]] = {
    "vqvae3d": (ROOT / "configs" / "vqvae3d_ixi.yaml", 10, "ssim", 0.01),
    "attrivae": (ROOT / "configs" / "attrivae_ixi.yaml", 15, "tied_spearman", 0.02),
}


def train_and_evaluate(config: Path, run: Path, precision: str, epochs: int, cache: Path,
                       seed: int | None = None) -> dict[str, Any]:
    """Train ``config`` for ``epochs`` epochs in ``precision`` into ``run``; the last checkpoint's validation metrics.

    Adds ``epochs`` (rows of metrics.csv), ``epoch_seconds`` (median of the run's epochs, validation
    included) and ``train_seconds`` (their sum) to what ``evaluate`` returns.
    """
    from medlatent.commands.evaluate import evaluate
    from medlatent.commands.registry import load_config
    from medlatent.commands.train import train

    overrides = [f"train.precision={precision}", f"train.epochs={epochs}", "train.max_minutes=null",
                 "train.preview=false", "data.cache=disk", f"data.cache_dir={cache.absolute()}"]
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if not (run / "checkpoints" / "last.pt").is_file():
        train(load_config(config, overrides), run)
    history = pd.read_csv(run / "metrics.csv")
    metrics = evaluate(run, "val", which="last")
    seconds = history["epoch_seconds"].tolist()
    return {**metrics, "precision": precision, "seed": seed, "epochs": len(history), "epoch_seconds": statistics.median(seconds),
            "train_seconds": float(sum(seconds)), "run": str(run)}


def compare(family: str, epochs: int, out: Path) -> dict[str, Any]:
    """Both precisions of ``family``: ``{fp32: metrics, bf16: metrics, diff: ..., max_abs_diff, target, ok}``."""
    config, _, figure, target = FAMILIES[family]
    runs = {p: train_and_evaluate(config, out / f"{family}_{p}", p, epochs, out / f"cache_{family}")
            for p in PRECISIONS}
    if figure == "ssim":
        diff = {"ssim": runs["bf16"]["ssim"] - runs["fp32"]["ssim"]}
    else:
        diff = {name: runs["bf16"][figure][name] - runs["fp32"][figure][name] for name in runs["fp32"][figure]}
    worst = max(abs(d) for d in diff.values())
    return {**runs, "figure": figure, "diff": diff, "max_abs_diff": worst, "target": target, "ok": worst <= target}


def table(results: dict[str, Any]) -> list[str]:
    """Markdown rows: one per family and precision, then the difference."""
    lines = ["| family | precision | epochs | s / epoch | validation figure | value | difference | target |",
             "|---|---|---:|---:|---|---|---|---|"]

    def row(family: str, label: str, run: dict[str, Any], figure: str, difference: str = "") -> str:
        value = run[figure]
        shown = f"{value:.4f}" if figure == "ssim" else ", ".join(f"{k} {v:.3f}" for k, v in value.items())
        name = "SSIM" if figure == "ssim" else "tied-dim Spearman"
        return f"| {family} | {label} | {run['epochs']} | {run['epoch_seconds']:.1f} | {name} | {shown} | {difference} | |"

    for family, entry in results.items():
        if family not in FAMILIES:
            continue
        figure = entry["figure"]
        lines += [row(family, p, entry[p], figure) for p in PRECISIONS]
        diffs = ", ".join(f"{k} {v:+.4f}" for k, v in entry["diff"].items())
        lines.append(f"| {family} | bf16 - fp32 | | | | | {diffs} (max abs {entry['max_abs_diff']:.4f}) | "
                     f"<= {entry['target']:g}: {'met' if entry['ok'] else 'NOT met'} |")
        for key, runs in results.items():  # the noise floor: another seed, same precision
            if key.startswith(f"{family}_seed"):
                for p, run in runs.items():
                    if figure == "ssim":
                        d = f"{run[figure] - entry[p][figure]:+.4f} against seed {entry[p].get('seed') or 'of the config'}"
                    else:
                        d = ", ".join(f"{k} {v - entry[p][figure][k]:+.3f}" for k, v in run[figure].items())
                    lines.append(row(family, f"{p}, seed {run['seed']}", run, figure, d))
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=(*FAMILIES, "both"), default="both")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: vqvae3d 10, attrivae 15)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "precision_quality",
                        help="run folders and the shared disk cache")
    parser.add_argument("--json", type=Path, help="write (merge) the figures here as JSON")
    parser.add_argument("--seed", type=int, help="another train.seed: train only --precisions, for the noise floor")
    parser.add_argument("--precisions", default="bf16", help="with --seed: comma-separated subset of fp32,bf16")
    args = parser.parse_args(argv)
    import os

    from medlatent.precision import cpu_info

    os.chdir(ROOT)  # config data paths are relative to the repository root
    info = cpu_info()
    print(f"{info['model']} ({', '.join(info['flags'])}; torch {info['torch_capability']}, {info['threads']} threads)")
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    results["cpu"] = info
    for family in FAMILIES if args.family == "both" else (args.family,):
        epochs = args.epochs or FAMILIES[family][1]
        if args.seed is not None:
            config = FAMILIES[family][0]
            results[f"{family}_seed{args.seed}"] = {
                p: train_and_evaluate(config, args.out / f"{family}_{p}_seed{args.seed}", p, epochs,
                                      args.out / f"cache_{family}", args.seed)
                for p in args.precisions.split(",")}
        else:
            results[family] = compare(family, epochs, args.out)
        if args.json:  # after each family: a later failure keeps what was measured
            write_text_atomic(args.json, json.dumps(results, indent=2, default=str) + "\n")
    print("\n".join(table(results)))
    return results


if __name__ == "__main__":
    main()
