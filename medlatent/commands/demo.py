"""``medlatent demo``: phantoms -> data check -> cached pipeline -> every model family -> exports.

Everything goes under one folder; the closing lines say where to look. The phantoms are
synthetic volumes with known ground truth: they show the pipeline working, never quality.
"""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path
from typing import Any

from medlatent.commands.attention import attention
from medlatent.commands.evaluate import evaluate
from medlatent.commands.export import export, run_command
from medlatent.commands.reconstruct import reconstruct
from medlatent.commands.registry import defaults_for, load_config
from medlatent.commands.report import report
from medlatent.commands.train import train
from medlatent.commands.traverse import traverse
from medlatent.io import write_text_atomic

__all__ = ["run_demo", "CONFIGS"]

# the demo runs the same configs/<model>_demo.yaml files a user can train from; they are package
# data (medlatent.configs), so they are found the same way after `pip install .` as in the checkout
CONFIGS = Path(str(importlib.resources.files("medlatent.configs")))


def _time_cached_passes(manifest: Path, spatial_size: list[int]) -> str:
    """Two passes over the phantoms through the memory cache: the second does no file I/O."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    data_cfg = defaults_for("vqvae3d")["data"]
    data_cfg.update(manifest=str(manifest), spatial_size=spatial_size, cache="memory")
    records, _ = load_split_records(data_cfg)
    started = time.perf_counter()
    dataset = make_dataset(records["train"], data_cfg, train=False, cache_dir=None)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    second = time.perf_counter() - started
    return f"cache: {len(dataset)} training volumes loaded and preprocessed in {first:.1f} s; a cached pass takes {second:.2f} s"


def _trained(cfg: dict[str, Any], run: Path) -> Path:
    """Train ``run``, or finish it when an earlier demo was interrupted (an already trained run is reused)."""
    return train(cfg, run, resume=(run / "checkpoints" / "last.pt").is_file())


def _bundle(run: Path, workdir: Path, scan: Path | str, shows: str) -> list[str]:
    """Export ``run`` as a MONAI bundle; the line with the ``python -m monai.bundle run`` command for ``scan``."""
    bundle = export(run, workdir / "bundle", overwrite=True)
    command = run_command(bundle.resolve(), input=str(scan), output_dir=str((workdir / "bundle_outputs").resolve()))
    print(f"reproduce {shows} without medlatent's CLI:\n  {command}", flush=True)
    return [f"MONAI bundle: {bundle} (model card {bundle / 'docs' / 'README.md'}); {shows} again, without "
            f"medlatent's CLI:\n      {command}"]


def vqvae3d_demo(workdir: Path, cfg: dict[str, Any], manifest: Path) -> list[str]:
    """Train, evaluate and reconstruct the VQ-VAE on the phantoms (``cfg`` from configs/vqvae3d_demo.yaml)."""
    from medlatent.transforms.manifest import read_manifest

    run = _trained(cfg, workdir / "run")
    metrics = evaluate(run, split="test")
    first = read_manifest(manifest).iloc[0]
    recon = workdir / "reconstruction.nii.gz"
    reconstruct(run, Path(first["image"]), recon, overwrite=True)
    return [f"VQ-VAE run: {run} (curves and reconstruction grids in {run / 'figures'})",
            f"VQ-VAE test SSIM {metrics['ssim']:.3f}, PSNR {metrics['psnr']:.1f}, codes used "
            f"{metrics['codes_used_frac']:.0%}: {run / 'eval' / 'metrics.json'}",
            f"VQ-VAE reconstruction of {first['subject']}: {recon} (overlays {first['image']})",
            *_bundle(run, workdir, first["image"], "the reconstruction (and the code grid)")]


def attrivae_demo(workdir: Path, cfg: dict[str, Any], manifest: Path) -> list[str]:
    """Train the Attri-VAE on the phantoms (``cfg`` from configs/attrivae_demo.yaml), evaluate, traverse one
    attribute and export attention maps of a test phantom with a lesion."""
    from medlatent.transforms.records import load_split_records

    run = _trained(cfg, workdir / "run")
    metrics = evaluate(run, "test")
    records, _ = load_split_records(cfg["data"])
    lesions = [r for r in records["test"] if r.get("label") == 1]
    subject = (lesions or records["test"])[0]
    attribute = cfg["data"]["attributes"][0]
    traversal = traverse(run, subject["image"], attribute, steps=9, out=workdir / "traversal", overwrite=True)
    maps = workdir / "attention"
    attention(run, subject["image"], use_class=True, out=maps, overwrite=True)
    attention(run, subject["image"], attribute=attribute, out=maps, overwrite=True)
    from medlatent.transforms.phantoms import MASK_LABELS

    names = workdir / "phantom_labels.csv"  # the phantom mask's labels, so the report names where each map peaks
    write_text_atomic(names, "Index,Name\n" + "".join(f"{v},{k}\n" for k, v in MASK_LABELS.items()))
    pages = report(run, subject["image"], labels=subject.get("mask"), label_names=names, out=workdir / "report",
                   overwrite=True)
    return [
        f"Attri-VAE run: {run} (curves in {run / 'figures'}; test metrics in {run / 'eval' / 'metrics.json'}: "
        f"ssim {metrics['ssim']:.2f}, auc {metrics['auc']:.2f}, scc {metrics['scc']:.2f})",
        f"Attri-VAE traversal of {attribute} for {subject['subject']}: {traversal / 'grid.png'} and step_XX.nii.gz",
        f"Attri-VAE attention maps for {subject['subject']}: {maps}/attention_class.png and "
        f"attention_{attribute}.png; open the .nii.gz over {subject['image']} in 3D Slicer or ITK-SNAP",
        *_bundle(run, workdir, subject["image"], "the reconstruction, attention maps, latent mean and class probability"),
        f"Attri-VAE report for {subject['subject']} (open in a browser, works offline): {pages / 'index.html'}",
    ]


DEMOS = {"vqvae3d": vqvae3d_demo, "attrivae": attrivae_demo}


def run_demo(out: Path, quick: bool = False) -> list[str]:
    """Run the whole pipeline on phantoms under ``out``; returns (and prints) where to look."""
    from medlatent.transforms.check import check_manifest
    from medlatent.transforms.phantoms import write_phantom_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shape = (32, 32, 32)
    manifest = write_phantom_dataset(out / "phantoms", n_subjects=24 if quick else 40, shape=shape, seed=0)
    lines = [f"phantoms: {manifest}"]
    print(lines[-1], flush=True)

    report = check_manifest(manifest, attributes=["cavity_volume_mm3", "wall_thickness_mm"], label="label")
    write_text_atomic(out / "data_check.txt", report.summary + "\n" + "\n".join(report.problems))
    if report.problems:
        raise RuntimeError("the generated phantoms failed the data check:\n" + "\n".join(report.problems))
    print(report.summary, flush=True)
    lines.append(f"data check: {out / 'data_check.txt'}")
    lines.append(_time_cached_passes(manifest, list(shape)))
    print(lines[-1], flush=True)

    for model, demo in DEMOS.items():
        config = CONFIGS / f"{model}_demo.yaml"
        overrides = [f"data.manifest={manifest}"] + (["train.epochs=2"] if quick else [])
        print(f"--- {model} ({config}) ---", flush=True)
        lines.extend(demo(out / model, load_config(config, overrides), manifest))
    lines.append(f"demo finished in {time.perf_counter() - started:.0f} s; everything is under {out.resolve()}")
    print("\nWhere to look:\n" + "\n".join(f"  {line}" for line in lines), flush=True)
    return lines
