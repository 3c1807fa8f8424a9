"""Priors over an IXI VQ-VAE's code grid: test bits per code, sampling speed, MMD and diversity.

Trains the PixelCNN and the transformer prior for the same wall-clock budget on the same VQ-VAE
run, evaluates both (``medlatent evaluate RUN --prior KIND``), and times MONAI's
``VQVAETransformerInferer.sample`` (no key/value cache) with the trained transformer's own
network, i.e. the same width and depth on the same grid, against our cached sampler at batch 1.

    python benchmarks/prior_sampling.py [--quick] [--json OUT] [--run RUN] [--workdir DIR] [--vqvae-minutes M]
                                        [--kinds pixelcnn transformer] [--checkpoints-min 15 30 45 60] [--mirror]
    python benchmarks/prior_sampling.py --timing-grid 16 16 12 [--timing-size 64 2 4] [--json OUT]

Without ``--run`` it first trains a VQ-VAE on IXI (``configs/vqvae3d_ixi.yaml``; with ``--quick`` at
32x32x24 for two minutes; ``--vqvae-minutes`` caps the full-size one, whose 100 epochs take over an
hour on a 2-core CPU). ``--quick`` takes a few minutes: small priors, one minute each.

``--checkpoints-min`` measures the budget a prior needs: it trains to the first budget, evaluates,
resumes to the next, and so on, and reports the first budget whose samples pass the MMD test
(p > 0.05) with diversity within 0.1 of the real volumes'. Next to it stands the ideal prior's
figure: the VQ-VAE's decoding of the validation volumes' own code grids against the real test
volumes, i.e. what a prior that samples the data's code distribution exactly would score; no prior
over this VQ-VAE can do better than its decoder allows. ``--kinds`` trains a subset, so the two
priors can run as two processes on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from medlatent.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def _train_vqvae(workdir: Path, quick: bool, minutes: float | None = None) -> Path:
    from medlatent.commands.registry import load_config
    from medlatent.commands.train import train

    overrides = ["data.images=" + str(ROOT.parent / "shared/data/ixi_t1_2mm/T1/*.nii.gz"),
                 "data.tables=[{path: " + str(ROOT.parent / "shared/data/ixi_t1_2mm/participants.csv")
                 + ", id_column: MRID}]"]
    if quick:
        overrides += ["data.spatial_size=[32,32,24]", "net.channels=[32]", "net.num_codes=64",
                      "train.max_minutes=2", "train.epochs=50"]
    elif minutes:
        # the config's 100 epochs take well over an hour on a 2-core CPU
        overrides += [f"train.max_minutes={minutes}"]
    cfg = load_config(ROOT / "configs" / "vqvae3d_ixi.yaml", overrides)
    run = workdir / "vqvae_ixi"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    return train(cfg, run)


def _time_sampling(prior, n: int, seed: int = 0) -> float:
    """Seconds per volume to draw ``n`` code grids with our sampler (top-level labels drawn uniformly)."""
    labels = torch.zeros(n, dtype=torch.long) if prior.levels[0].num_classes else None
    started = time.perf_counter()
    prior.sample(n, labels, generator=torch.Generator().manual_seed(seed))
    return (time.perf_counter() - started) / n


def _time_monai(transformer, n: int = 1) -> float:
    """Seconds per volume for MONAI's inferer on the same network (``transformer.net``) and grid."""
    from monai.inferers import VQVAETransformerInferer
    from monai.utils.ordering import Ordering

    class _Codes:
        # the inferer asks the first stage for its codebook size and decodes at the end;
        # decoding is timed for both samplers elsewhere, so here it returns the codes
        num_embeddings = transformer.num_codes

        def decode_samples(self, z: torch.Tensor) -> torch.Tensor:
            return z

    order = Ordering("raster_scan", spatial_dims=3, dimensions=(1, *transformer.shape))
    start = torch.full((n, 1), transformer.num_codes)
    started = time.perf_counter()
    with torch.no_grad():
        VQVAETransformerInferer().sample(transformer.shape, start, _Codes(), transformer.net, order, verbose=False)
    return (time.perf_counter() - started) / n


def time_at_grid(shape: tuple[int, int, int], dim: int, depth: int, heads: int, num_codes: int = 256) -> dict:
    """Seconds per volume (batch 1) of our cached sampler and MONAI's inferer on one network at ``shape``.

    Sampling time does not depend on the weights' values, so an untrained prior of the given
    width and depth times both samplers at a grid larger than the quick run's without training.
    """
    from medlatent.vqvae3d.prior_transformer import TransformerPrior

    torch.manual_seed(0)
    prior = TransformerPrior(num_codes, shape, dim=dim, depth=depth, heads=heads).eval()
    started = time.perf_counter()
    prior.sample(1, generator=torch.Generator().manual_seed(0))
    ours = time.perf_counter() - started
    theirs = _time_monai(prior)
    return {"grid": list(shape), "dim": dim, "depth": depth, "heads": heads, "tokens": prior.length,
            "transformer_sample_s_batch1": ours, "monai_sample_s": theirs, "speedup": theirs / ours}


PASS_P = 0.05
PASS_DIVERSITY = 0.1


def passes(ev: dict) -> bool:
    """The issue's bar for samples: MMD permutation p > 0.05 and diversity within 0.1 of the real volumes'."""
    return ev["mmd_p"] > PASS_P and abs(ev["diversity_samples"] - ev["diversity_real"]) <= PASS_DIVERSITY


def ideal_prior(run: Path) -> dict:
    """MMD and diversity of the validation split's own code grids, decoded, against the real test volumes.

    A prior that sampled exactly the data's code distribution would produce such volumes, so this is
    the ceiling of every prior over this VQ-VAE (the decoder's blur included).
    """
    from medlatent.commands.prior import _real_volumes, encoded_splits, prior_defaults
    from medlatent.commands.runs import load_run
    from medlatent.vqvae3d.prior import decode_codes
    from medlatent.vqvae3d.prior_metrics import mean_pairwise_ssim, mmd_test, pooled_features

    ev = prior_defaults()["prior"]["eval"]
    state = load_run(run, "evaluate --prior")
    val_codes = encoded_splits(state)["splits"]["val"]["codes"]
    with state.inference():
        decoded = decode_codes(state.model, [c.to(state.device) for c in val_codes], 4)
    real = _real_volumes(state, "test")
    vqvae = state.model.cpu()
    mmd, mmd_p = mmd_test(pooled_features(vqvae, decoded), pooled_features(vqvae, real),
                          permutations=ev["permutations"], seed=ev["seed"])
    data_range = float(real.max() - real.min()) or 1.0
    return {"mmd": mmd, "mmd_p": mmd_p, "num_decoded": int(decoded.shape[0]), "num_test": int(real.shape[0]),
            "diversity_decoded": mean_pairwise_ssim(decoded, data_range, ev["max_pairs"], ev["seed"]),
            "diversity_real": mean_pairwise_ssim(real, data_range, ev["max_pairs"], ev["seed"])}


def _epochs_trained(pdir: Path) -> int:
    metrics = pdir / "metrics.csv"
    return max(0, len(metrics.read_text().splitlines()) - 1) if metrics.is_file() else 0


def budget_table(results: dict) -> str:
    """Per prior and budget: epochs, bits per code, MMD and diversity, and whether the samples pass."""
    lines = ["| prior | minutes | epochs | bits per code | MMD | p | p against reconstructions | "
             "diversity (real) | passes |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind in ("pixelcnn", "transformer"):
        for row in results.get(f"{kind}_budget", []):
            lines.append(f"| {kind} | {row['minutes']:g} | {row['epochs']} | {row['test_bits_per_code']:.3f} | "
                         f"{row['mmd']:.3f} | {row['mmd_p']:.3f} | {row.get('mmd_reconstructions_p', math.nan):.3f} | "
                         f"{row['diversity_samples']:.3f} ({row['diversity_real']:.3f}) | "
                         f"{'yes' if row['passes'] else 'no'} |")
    if "ideal_prior" in results:
        ideal = results["ideal_prior"]
        lines.append(f"| ideal (val codes decoded) | | | | {ideal['mmd']:.3f} | {ideal['mmd_p']:.3f} | | "
                     f"{ideal['diversity_decoded']:.3f} ({ideal['diversity_real']:.3f}) | "
                     f"{'yes' if ideal['mmd_p'] > PASS_P else 'no'} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """The headline figures of the trained priors as a markdown table."""
    rows = [("test bits per code (unigram %.3f)" % results["unigram_bits_per_code"], "bits_per_code", "%.3f"),
            ("seconds per volume, batched, decode included", "sample_s", "%.3f"),
            ("seconds per volume, batch 1", "sample_s_batch1", "%.2f"),
            ("MMD on encoder features", "mmd", "%.3f"),
            ("MMD permutation p", "mmd_p", "%.3f"),
            ("diversity: mean pairwise SSIM (real %.3f)" % results["diversity_real"],
             "diversity_samples", "%.3f")]
    kinds = [k for k in ("pixelcnn", "transformer") if f"{k}_bits_per_code" in results]
    names = {"pixelcnn": "gated PixelCNN", "transformer": "cached transformer"}
    lines = ["| figure | " + " | ".join(names[k] for k in kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt % results[f"{kind}_{key}"] for kind in kinds) + " |")
    if "monai_sample_s" in results:
        lines.append("| MONAI inferer, seconds per volume, batch 1 | " + "| " * (len(kinds) - 1)
                     + f"{results['monai_sample_s']:.2f} ({results['transformer_speedup_vs_monai']:.1f}x slower) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, about a minute per prior")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--run", help="an IXI VQ-VAE run (default: train one under --workdir)")
    parser.add_argument("--workdir", default="runs/bench_prior_sampling")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per prior")
    parser.add_argument("--vqvae-minutes", type=float, default=None,
                        help="training budget of the VQ-VAE (default: the config's epochs); ignored with --run or --quick")
    parser.add_argument("--mirror", action="store_true",
                        help="train the priors on the training grids and their left-right mirrors (prior.mirror)")
    parser.add_argument("--kinds", nargs="+", choices=("pixelcnn", "transformer"), default=["pixelcnn", "transformer"])
    parser.add_argument("--checkpoints-min", type=float, nargs="+", default=None,
                        help="evaluate each prior after these cumulative training budgets (minutes); the last is the budget")
    parser.add_argument("--timing-grid", type=int, nargs=3, metavar=("D", "H", "W"),
                        help="only time both samplers at this code grid (untrained network of --timing-size)")
    parser.add_argument("--timing-size", type=int, nargs=3, metavar=("DIM", "DEPTH", "HEADS"), default=(64, 2, 4))
    args = parser.parse_args(argv)
    if args.timing_grid:
        result = time_at_grid(tuple(args.timing_grid), *args.timing_size)
        print(json.dumps(result, indent=2))
        if args.json:
            write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
        return result

    from medlatent.commands.prior import evaluate_prior, load_prior, train_prior

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else _train_vqvae(workdir, args.quick, args.vqvae_minutes)
    budgets = sorted(args.checkpoints_min or [args.minutes or (1.0 if args.quick else 10.0)])
    minutes = budgets[-1]
    common = ["train.epochs=100000", "prior.eval.num_samples=" + ("8" if args.quick else "18"),
              f"prior.mirror={str(args.mirror).lower()}"]
    # learning rates from a one-minute check on the quick run: the PixelCNN reached 0.95 bits per
    # code at 3e-3 and stayed at the unigram figure at 5e-4
    sizes = {"pixelcnn": ["train.lr=3e-3", "prior.pixelcnn.channels=32", "prior.pixelcnn.layers=" + ("4" if args.quick else "8")],
             "transformer": ["train.lr=1e-3", "prior.transformer.dim=" + ("64" if args.quick else "128"),
                             "prior.transformer.depth=" + ("2" if args.quick else "4"), "prior.transformer.heads=4"]}
    results: dict = {"run": str(run), "quick": args.quick, "minutes_per_prior": minutes, "kinds": args.kinds,
                     "mirror": args.mirror,
                     "pass_rule": f"mmd_p > {PASS_P} and |diversity_samples - diversity_real| <= {PASS_DIVERSITY}"}
    for kind in args.kinds:
        pdir = run / "prior" / kind  # both kinds share the run's encoded grids (RUN/prior/codes.pt)
        if pdir.exists():
            shutil.rmtree(pdir)
        curve = []
        for i, budget in enumerate(budgets):
            # max_minutes is the run's total, so each resume trains on to the next budget
            if i == 0:
                train_prior(run, prior=kind, overrides=common + sizes[kind] + [f"train.max_minutes={budget}"])
            else:
                train_prior(run, prior=kind, overrides=[f"train.max_minutes={budget}"], resume=True)
            ev = evaluate_prior(run, prior=kind)
            curve.append({"minutes": budget, "epochs": _epochs_trained(pdir), "passes": passes(ev),
                          **{k: ev[k] for k in ("test_bits_per_code", "mmd", "mmd_p", "mmd_reconstructions",
                                                "mmd_reconstructions_p", "diversity_samples", "diversity_real",
                                                "sample_seconds_per_volume")}})
        results[f"{kind}_budget"] = curve
        results[f"{kind}_minutes_to_pass"] = next((row["minutes"] for row in curve if row["passes"]), None)
        prior, _, info, _ = load_prior(run, kind)
        results[f"{kind}_bits_per_code"] = ev["test_bits_per_code"]
        results[f"{kind}_sample_s"] = ev["sample_seconds_per_volume"]  # batched, decode included
        results[f"{kind}_sample_s_batch1"] = _time_sampling(prior, 1)
        results["unigram_bits_per_code"] = ev["unigram_bits_per_code"]
        results["grid"] = [level["shape"] for level in info["levels"]]
        for key in ("mmd", "mmd_p", "diversity_samples", "diversity_real"):
            results[f"{kind}_{key}"] = ev[key]
        if kind == "transformer":
            results["monai_sample_s"] = _time_monai(prior.levels[-1])
            results["transformer_speedup_vs_monai"] = results["monai_sample_s"] / results["transformer_sample_s_batch1"]
    # the headline sample-quality figures are the transformer's (the default prior)
    headline = "transformer" if "transformer" in args.kinds else args.kinds[0]
    for key in ("mmd", "mmd_p", "diversity_samples", "diversity_real"):
        results[key] = results[f"{headline}_{key}"]
    if not args.quick:
        results["ideal_prior"] = ideal_prior(run)
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))
    print(table(results))
    print(budget_table(results))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
