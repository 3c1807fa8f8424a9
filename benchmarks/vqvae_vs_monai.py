"""Benchmark: medlatent's VQVAE3d against monai.networks.nets.VQVAE at the same wall-clock budget.

Both models see the IXI config's data and split (configs/vqvae3d_ixi.yaml: 145 training
volumes at 64x64x48), the same batches (batch 4, same seed), L1 + quantizer loss, Adam 1e-3,
and the same training time. MONAI's net is the one measured in DESIGN.md (channels 32/64, 2
residual layers, 256 x 32 codebook, its default EMA decay 0.5); ours takes the width whose
parameter count is closest to MONAI's (within 10%). Each model trains in its own process (so
that peak RSS is its own), one after the other.

Reported per model: test SSIM, PSNR, MAE, fraction of codes used on the test set, training
volumes per second, FLOPs per training step (torch.utils.flop_counter) and achieved GFLOP/s,
peak RSS, parameters, and the precision and layout both models ran in with the fraction of this
machine's measured GEMM peak in that precision (benchmarks/hardware_peak.py) the step reaches.

``--precision`` (auto, fp32, bf16; default auto: what ``train.precision: auto`` picks here) and
``--channels-last`` (true, false, auto; default true, our VQ-VAE's own default) apply to both models alike, so a speed-up comes from the
model, not from a better setting; each model's entry records ``precision`` and ``channels_last``.

    python benchmarks/vqvae_vs_monai.py [--budget-min 15] [--precision auto] [--json OUT] [--adrenal | --adrenal-only]

``--adrenal`` also trains ours on configs/vqvae3d_adrenal.yaml for the budget and reports
test SSIM and the Dice of the reconstruction thresholded at 0.5 against the input's mask. That
run uses the config's own reconstruction loss (MSE): under L1 the best constant guess for a
mask with 2% foreground is 0 everywhere, and the reconstruction comes out empty (Dice 0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medlatent.io import write_text_atomic  # noqa: E402 - after the path set-up above

BATCH, LR, SEED = 4, 1.0e-3, 0
KEYS = ("precision", "ssim", "psnr", "mae", "codes_used_frac", "vol_per_s", "gflop_per_step", "gflops_per_s",
        "peak_fraction", "peak_rss_mb", "params")


def monai_model() -> torch.nn.Module:
    from monai.networks.nets import VQVAE

    return VQVAE(spatial_dims=3, in_channels=1, out_channels=1, channels=(32, 64), num_res_layers=2,
                 num_res_channels=(32, 64), downsample_parameters=((2, 4, 1, 1), (2, 4, 1, 1)),
                 upsample_parameters=((2, 4, 1, 1, 0), (2, 4, 1, 1, 0)), num_embeddings=256, embedding_dim=32)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def our_model(cfg: dict[str, Any], target_params: int | None) -> torch.nn.Module:
    """Ours from the config; with ``target_params`` the encoder width closest to that count."""
    import copy

    from medlatent.vqvae3d.family import build_model

    if target_params is None:
        return build_model(cfg)
    best = None
    for width in range(32, 129, 2):
        trial = copy.deepcopy(cfg)
        trial["net"]["channels"] = [width]
        params = count(build_model(trial))
        if best is None or abs(params - target_params) < abs(best[1] - target_params):
            best = (width, params)
    cfg = copy.deepcopy(cfg)
    cfg["net"]["channels"] = [best[0]]
    return build_model(cfg)


def load_split(cfg: dict[str, Any], cache: Path) -> Path:
    """Preprocess the train and test splits once into a tensor file both model processes read."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    records, _ = load_split_records(cfg["data"])
    tensors = {}
    for split in ("train", "test"):
        dataset = make_dataset(records[split], cfg["data"], train=False)
        tensors[split] = torch.stack([dataset[i]["image"].as_tensor() for i in range(len(dataset))])
    torch.save(tensors, cache)
    return cache


def forward(kind: str, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out[0], out[1]


def train_step(kind: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               recon: str = "l1", precision: Any = None) -> None:
    from medlatent import precision as precision_lib
    from medlatent.vqvae3d.model import reconstruction_loss

    with precision_lib.autocast(precision or precision_lib.Precision()):
        reconstruction, q_loss = forward(kind, model, x)
    loss = reconstruction_loss(reconstruction.float(), x, recon).mean() + q_loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def code_indices(kind: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if kind == "monai":
        return model.index_quantize(x)
    return torch.cat([g.flatten() for g in model.encode_indices(x)])


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB): VmHWM, which exec resets, unlike ru_maxrss (that a spawned
    child inherits from its parent's high-water mark)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_model(kind: str, data_file: str, budget_s: float, cfg: dict[str, Any], target_params: int | None,
              queue: Any, dice: bool = False, setting: tuple[str, bool] = ("fp32", True), peak: float | None = None,
              ) -> None:
    """Train one model for ``budget_s`` seconds and put its figures on ``queue`` (runs in a child process).

    ``setting``: (precision name, channels_last) for both models; ``peak``: this machine's GEMM GFLOP/s
    in that precision, for ``peak_fraction``.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from medlatent import precision as precision_lib
    from medlatent.metrics import reconstruction_metrics

    precision = precision_lib.Precision("cpu", setting[0], channels_last=setting[1])
    torch.manual_seed(SEED)
    data = torch.load(data_file, weights_only=True)
    train, test = (precision_lib.to_layout(data[k], precision) for k in ("train", "test"))
    cfg = copy.deepcopy(cfg)
    cfg["net"]["channels_last"] = precision.channels_last  # our model's own layout switch follows the setting
    model = monai_model() if kind == "monai" else our_model(cfg, target_params)
    model = precision_lib.prepare_model(model, precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    # FLOPs of one training step, on a copy so the measured run starts from the same state
    probe_model = copy.deepcopy(model)
    probe_opt = torch.optim.Adam(probe_model.parameters(), lr=LR)
    with FlopCounterMode(display=False) as counter:
        train_step(kind, probe_model, probe_opt, train[:BATCH], cfg["loss"]["recon"], precision)
    flops = counter.get_total_flops()
    del probe_model, probe_opt

    model.train()
    generator = torch.Generator().manual_seed(SEED)
    volumes, steps, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < budget_s:
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            train_step(kind, model, optimizer, train[order[start:start + BATCH]], cfg["loss"]["recon"], precision)
            volumes += BATCH
            steps += 1
            if time.perf_counter() - started >= budget_s:
                break
    seconds = time.perf_counter() - started

    model.eval()
    sums: dict[str, float] = {}
    used: set[int] = set()
    dice_sum, n = 0.0, 0
    with precision_lib.inference(precision):
        for start in range(0, len(test), BATCH):
            x = test[start:start + BATCH]
            reconstruction, _ = forward(kind, model, x)
            reconstruction = reconstruction.float()
            for key, values in reconstruction_metrics(reconstruction, x, data_range=1.0).items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
            used.update(code_indices(kind, model, x).unique().tolist())
            if dice:
                pred, truth = reconstruction > 0.5, x > 0.5
                inter = (pred & truth).flatten(1).sum(1).float()
                total = pred.flatten(1).sum(1).float() + truth.flatten(1).sum(1).float()
                dice_sum += float((2 * inter / total.clamp(min=1)).sum())
            n += len(x)
    codes = 256 if kind == "monai" else sum(model.num_codes)
    result = {
        "ssim": sums["ssim"] / n, "psnr": sums["psnr"] / n, "mae": sums["mae"] / n,
        "codes_used_frac": len(used) / codes, "vol_per_s": volumes / seconds,
        "gflop_per_step": flops / 1e9, "gflops_per_s": flops * steps / seconds / 1e9,
        "peak_rss_mb": peak_rss_mb(), "precision": precision.name, "channels_last": precision.channels_last,
        "peak_gflops": peak, "peak_fraction": flops * steps / seconds / 1e9 / peak if peak else None,
        "params": count(model), "train_seconds": seconds, "train_volumes": volumes, "n_test": n,
    }
    if dice:
        result["dice"] = dice_sum / n
    queue.put(result)


def in_child(*args: Any, **kwargs: Any) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_model, args=(*args[:5], queue, *args[5:]), kwargs=kwargs)
    process.start()
    result = queue.get()
    process.join()
    return result


def table(results: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> str:
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, values in results.items():
        cells = [f"{values.get(k):.4g}" if isinstance(values.get(k), float) else str(values.get(k)) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_on_ixi(tmp: Path, budget_s: float, budget_min: float, setting: tuple[str, bool],
                   peak: float | None) -> dict[str, Any]:
    """Ours against MONAI's VQVAE on the IXI config, L1 + quantizer loss, ``budget_s`` each, both in ``setting``."""
    from medlatent.commands.registry import load_config

    cfg = load_config(ROOT / "configs" / "vqvae3d_ixi.yaml")
    cfg["loss"]["recon"] = "l1"
    data = load_split(cfg, tmp / "ixi.pt")
    target = count(monai_model())
    results = {}
    for kind in ("medlatent", "monai"):
        print(f"training {kind} for {budget_min} min ...", flush=True)
        results[kind] = in_child(kind, str(data), budget_s, cfg, target, setting=setting, peak=peak)
    print(table(results, KEYS))
    ours, theirs = results["medlatent"], results["monai"]
    print(f"\nparams ratio {ours['params'] / theirs['params']:.3f}, throughput ratio "
          f"{ours['vol_per_s'] / theirs['vol_per_s']:.2f}x, SSIM {ours['ssim']:.3f} vs {theirs['ssim']:.3f}")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from medlatent.commands.registry import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=15.0, help="training minutes per model (default 15)")
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--adrenal", action="store_true", help="also train ours on AdrenalMNIST3D 64")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="both models' autocast precision (auto: what train.precision auto picks on this CPU)")
    parser.add_argument("--channels-last", choices=("auto", "true", "false"), default="true",
                        help="both models' memory layout (default true: our VQ-VAE's own net.channels_last default, "
                             "the faster layout on CPU; auto: what train.channels_last auto picks)")
    parser.add_argument("--adrenal-only", action="store_true", help="skip the IXI comparison (implies --adrenal)")
    args = parser.parse_args(argv)
    budget_s = args.budget_min * 60
    from hardware_peak import gemm_gflops

    from medlatent import precision as precision_lib

    layout = args.channels_last if args.channels_last == "auto" else args.channels_last == "true"
    resolved = precision_lib.resolve({"precision": args.precision, "channels_last": layout}, "cpu")
    setting = (resolved.name, resolved.channels_last)
    peak = gemm_gflops(resolved.dtype or torch.float32, torch.device("cpu"))
    print(f"both models: {resolved.describe()}; measured GEMM peak in {resolved.name}: {peak:.1f} GFLOP/s", flush=True)

    import os

    os.chdir(ROOT)  # config data paths are relative to the repository root
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.adrenal_only:
            results.update(compare_on_ixi(Path(tmp), budget_s, args.budget_min, setting, peak))
        if args.adrenal or args.adrenal_only:
            adrenal = load_config(ROOT / "configs" / "vqvae3d_adrenal.yaml")  # its own loss (mse): L1 empties sparse masks
            data = load_split(adrenal, Path(tmp) / "adrenal.pt")
            print(f"training medlatent on AdrenalMNIST3D for {args.budget_min} min ...", flush=True)
            results["adrenal"] = in_child("medlatent", str(data), budget_s, adrenal, None, True, setting=setting, peak=peak)
            print(table({"medlatent (adrenal)": results["adrenal"]}, ("ssim", "dice", "psnr", "codes_used_frac",
                                                                       "vol_per_s")))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
