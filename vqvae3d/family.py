"""The VQ-VAE family's entry points: config defaults, task building and the run-based commands.

``medlatent.cli`` looks the ``cmd_*`` functions up by the run's ``model`` (docs/architecture.md).
Everything here works on paths at the edge and hands tensors to ``model``/``task``/``features``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medlatent import distributed as dist_utils
from medlatent.errors import InputError
from medlatent.io import write_text_atomic
from medlatent.runs import checkpoint_path, load_checkpoint, load_run_config, write_json
from medlatent.vqvae3d.model import VQVAE3d
from medlatent.vqvae3d.task import VQVAETask

__all__ = ["DEFAULTS", "build_model", "build_task", "load_model", "cmd_evaluate", "cmd_reconstruct",
           "cmd_encode", "encode_features", "cmd_train_prior", "cmd_sample", "run_demo"]

DEFAULTS: dict[str, Any] = {
    "net": {
        "levels": 1,                 # 1: flat VQ-VAE; 2: VQ-VAE-2 top (1/2^(k+1)) + bottom (1/2^k) grids
        "downsample_log2": 2,        # k: the (bottom) code grid is 1/2^k of the input per axis
        "space_to_depth": 2,         # lossless reshape before the encoder (CPU speed; 1 disables)
        "channels": [64],            # encoder widths, one per stride-2 level: k - log2(space_to_depth) levels
        "decoder_channels": None,    # default: channels reversed
        "decoder_final_channels": None,  # width of the decoder's last, highest-resolution level (default: its last width)
        "num_res_units": 2,
        "res_channels": None,
        "top_channels": None,        # two-level: width of the top encoder/decoder (default channels[-1])
        "embedding_dim": 32,
        "num_codes": 256,            # one int, or [top, bottom] for two levels
        "norm": "none",
        "channels_last": True,
        "quantizer": {"decay": 0.99, "dead_threshold": 1.0, "kmeans_iters": 10, "eps": 1.0e-5},
    },
    "loss": {"recon": "mse", "commitment": 0.25},
    "train": {"best_metric": "val_ssim", "best_mode": "max"},
}

# --- model and task ----------------------------------------------------------------------

def build_model(cfg: dict[str, Any]) -> VQVAE3d:
    """The ``VQVAE3d`` the ``net`` and ``loss`` sections describe (InputError naming the key if not)."""
    net, loss = cfg["net"], cfg["loss"]
    s2d = int(net["space_to_depth"])
    if s2d < 1 or s2d & (s2d - 1):
        raise InputError(f"config key 'net.space_to_depth': must be a power of two, got {s2d}")
    strided = int(net["downsample_log2"]) - int(math.log2(s2d))
    if strided < 1:
        raise InputError(f"config key 'net.downsample_log2': {net['downsample_log2']} leaves no strided level "
                         f"after net.space_to_depth={s2d}; use a larger k or a smaller space_to_depth")
    channels = list(net["channels"] or [])
    if len(channels) == 1:
        channels = channels * strided  # one width for every level
    if len(channels) != strided:
        raise InputError(f"config key 'net.channels': needs {strided} width(s) for downsample_log2="
                         f"{net['downsample_log2']} and space_to_depth={s2d}, got {net['channels']}")
    if loss["recon"] not in ("mse", "l1"):
        raise InputError(f"config key 'loss.recon': must be mse or l1, got {loss['recon']!r}")
    q = net["quantizer"]
    try:
        return VQVAE3d(
            in_channels=1, channels=channels, embedding_dim=int(net["embedding_dim"]), num_codes=net["num_codes"],
            num_res_units=int(net["num_res_units"]), res_channels=net["res_channels"],
            decoder_channels=net["decoder_channels"], decoder_final_channels=net["decoder_final_channels"],
            space_to_depth=s2d, levels=int(net["levels"]),
            top_channels=net["top_channels"], norm=net["norm"], decay=float(q["decay"]),
            commitment=float(loss["commitment"]), dead_threshold=float(q["dead_threshold"]),
            kmeans_iters=int(q["kmeans_iters"]), eps=float(q["eps"]), channels_last=bool(net["channels_last"]))
    except (ValueError, TypeError) as err:
        raise InputError(f"config section 'net': {err}") from None


def _check_spatial_size(cfg: dict[str, Any], model: VQVAE3d) -> None:
    size = cfg["data"]["spatial_size"]
    if any(int(s) % model.grid_factor for s in size):
        raise InputError(f"config key 'data.spatial_size': {size} must be divisible by {model.grid_factor} "
                         f"(the model's downsampling)")


def _data_range(cfg: dict[str, Any]) -> float | None:
    # percentile scaling maps intensities to [0, 1]; otherwise PSNR/SSIM use each batch's range
    return 1.0 if cfg["data"]["intensity"] == "percentile" else None


def build_task(cfg: dict[str, Any], info: Any, run_dir: Path, records: dict[str, list]) -> VQVAETask:
    """The training task of a VQ-VAE run (``info`` and ``records`` are not needed by this family)."""
    model = build_model(cfg)
    _check_spatial_size(cfg, model)
    return VQVAETask(model, recon=cfg["loss"]["recon"], data_range=_data_range(cfg))


def load_model(run: str | Path, which: str = "best") -> tuple[VQVAE3d, dict[str, Any]]:
    """A trained run's model in eval mode (on the CPU) and its resolved config.

    Raises:
        InputError: ``run`` is not a run directory or holds no checkpoint (names the path).
    """
    cfg = load_run_config(run)
    state = load_checkpoint(checkpoint_path(run, which))
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise InputError(f"{run}: checkpoint does not match the run's config: {err}") from None
    return model.eval(), cfg


# --- commands ------------------------------------------------------------------------------

def cmd_evaluate(run: Path, split: str = "test", prior: bool = False) -> dict[str, float]:
    """Write ``RUN/eval/metrics.json`` and ``per_subject.csv`` for ``split`` (suffixed ``_val`` etc. for
    other splits); with ``prior`` delegate to the generation module. Returns the metrics."""
    if prior:
        from medlatent.vqvae3d.generation import evaluate_prior

        return evaluate_prior(run)
    from medlatent.engine import make_loader, run_evaluation
    from medlatent.train import cache_dir_for
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    model, cfg = load_model(run)
    records, _ = load_split_records(cfg["data"])
    if not records.get(split):
        raise InputError(f"{run}: the '{split}' split of {cfg['data'].get('manifest') or cfg['data'].get('images')} "
                         f"is empty")
    dataset = make_dataset(records[split], cfg["data"], train=False, cache_dir=cache_dir_for(cfg, Path(run)))
    device = dist_utils.pick_device()
    model.to(device)
    loader = make_loader(dataset, int(cfg["train"]["batch_size"]), int(cfg["train"]["num_workers"]))
    task = VQVAETask(model, recon=cfg["loss"]["recon"], data_range=_data_range(cfg))
    means, rows = run_evaluation(task, model, loader, device)
    keys = ["ssim", "psnr", "mae", "mse", "perplexity", "codes_used_frac"]
    metrics: dict[str, Any] = {k: means[k] for k in keys}
    metrics.update({k: v for k, v in means.items() if k not in metrics})
    metrics.update({"n": len(rows), "split": split})
    suffix = "" if split == "test" else f"_{split}"
    write_json(Path(run) / "eval" / f"metrics{suffix}.json", metrics)
    write_text_atomic(Path(run) / "eval" / f"per_subject{suffix}.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"{split}: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in keys) + f" (n={len(rows)})")
    return metrics


def cmd_reconstruct(run: Path, input: Path, output: Path, mask: Path | None = None) -> Path:
    """Reconstruct ``input`` and write it to ``output`` (NIfTI) on the input file's grid and affine.

    Intensities stay in model units (e.g. [0, 1] after percentile scaling). ``mask``: the
    scan's mask, needed when the run was trained with ``data.mask_image``.
    """
    from medlatent.nifti import write_nifti
    from medlatent.transforms.pipeline import load_volume, to_input_geometry

    if not str(output).endswith((".nii", ".nii.gz")):
        raise InputError(f"{output}: the output must be a .nii or .nii.gz file")
    model, cfg = load_model(run)
    item = load_volume(input, cfg["data"], mask=mask)
    with torch.no_grad():
        reconstruction, _, _ = model(item["image"].as_tensor()[None])
    volume = to_input_geometry(reconstruction[0], item, cfg["data"])
    write_nifti(volume, output)
    print(f"wrote {output} ({tuple(volume.shape[1:])})")
    return Path(output)


def encode_features(run: Path, manifest: Path, codes_dir: Path | None = None) -> pd.DataFrame:
    """One row per manifest subject: ``subject``, pooled features and code-usage summary.

    See ``vqvae3d.features.volume_features`` for the columns. With ``codes_dir``, each
    subject's code grid(s) are saved there as ``.npy``.
    """
    from medlatent.vqvae3d.features import encode_manifest

    model, cfg = load_model(run)
    return encode_manifest(model, cfg["data"], manifest, codes_dir)


def cmd_encode(run: Path, manifest: Path, out: Path, codes_dir: Path | None = None) -> pd.DataFrame:
    """Write ``encode_features`` to ``out`` (CSV)."""
    frame = encode_features(run, manifest, codes_dir)
    write_text_atomic(out, frame.to_csv(index=False))
    print(f"wrote {out}: {len(frame)} subjects x {frame.shape[1] - 1} features")
    return frame


def cmd_train_prior(run: Path, prior: str = "transformer", overrides: list[str] | None = None,
                    resume: bool = False) -> Any:
    """Train an autoregressive prior over the run's codes (``vqvae3d.generation``)."""
    from medlatent.vqvae3d.generation import train_prior

    return train_prior(run, prior=prior, overrides=overrides, resume=resume)


def cmd_sample(run: Path, n: int = 8, label: str | None = None, temperature: float = 1.0, top_k: int | None = None,
               seed: int = 0, out: Path | None = None) -> Any:
    """Sample volumes from the run's prior (``vqvae3d.generation``)."""
    from medlatent.vqvae3d.generation import sample

    return sample(run, n=n, label=label, temperature=temperature, top_k=top_k, seed=seed, out=out)


# --- demo ------------------------------------------------------------------------------------

def run_demo(workdir: Path, cfg: dict[str, Any], manifest: Path) -> list[str]:
    """Train, evaluate and reconstruct the VQ-VAE on the phantoms (``cfg`` from configs/vqvae3d_demo.yaml)."""
    from medlatent.train import train
    from medlatent.transforms.manifest import read_manifest

    run = Path(workdir) / "run"
    resume = (run / "checkpoints" / "last.pt").is_file()
    train(cfg, run, resume=resume)
    metrics = cmd_evaluate(run, split="test")
    first = read_manifest(manifest).iloc[0]
    recon = Path(workdir) / "reconstruction.nii.gz"
    cmd_reconstruct(run, Path(first["image"]), recon)
    return [f"VQ-VAE run: {run} (curves and reconstruction grids in {run / 'figures'})",
            f"VQ-VAE test SSIM {metrics['ssim']:.3f}, PSNR {metrics['psnr']:.1f}, codes used "
            f"{metrics['codes_used_frac']:.0%}: {run / 'eval' / 'metrics.json'}",
            f"VQ-VAE reconstruction of {first['subject']}: {recon} (overlays {first['image']})"]
