"""``medlatent demo``: phantoms -> data check -> cached pipeline -> every model family -> exports.

Everything goes under one folder; the closing lines say where to look. The phantoms are
synthetic volumes with known ground truth: they show the pipeline working, never quality.
"""

from __future__ import annotations

import importlib
import importlib.resources
import time
from pathlib import Path

from medlatent.config import COMMON_DEFAULTS, FAMILIES, load_config
from medlatent.io import write_text_atomic

__all__ = ["run_demo", "CONFIGS"]

# the demo runs the same configs/<model>_demo.yaml files a user can train from; they are package
# data (medlatent.configs), so they are found the same way after `pip install .` as in the checkout
CONFIGS = Path(str(importlib.resources.files("medlatent.configs")))


def _time_cached_passes(manifest: Path, spatial_size: list[int]) -> str:
    """Two passes over the phantoms through the memory cache: the second does no file I/O."""
    import copy

    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    data_cfg = copy.deepcopy(COMMON_DEFAULTS["data"])
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

    for model, module_name in FAMILIES.items():
        family = importlib.import_module(module_name)
        config = CONFIGS / f"{model}_demo.yaml"
        overrides = [f"data.manifest={manifest}"] + (["train.epochs=2"] if quick else [])
        print(f"--- {model} ({config}) ---", flush=True)
        lines.extend(family.run_demo(out / model, load_config(config, overrides), manifest))
    lines.append(f"demo finished in {time.perf_counter() - started:.0f} s; everything is under {out.resolve()}")
    print("\nWhere to look:\n" + "\n".join(f"  {line}" for line in lines), flush=True)
    return lines
