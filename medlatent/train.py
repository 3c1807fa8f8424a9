"""``medlatent train``: from a resolved config to a trained run directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from medlatent import distributed as dist_utils
from medlatent.config import family_module
from medlatent.engine import fit, lr_factor, seed_everything
from medlatent.errors import InputError
from medlatent.io import write_text_atomic
from medlatent.runs import load_run_config, prepare_run, write_config, write_json

__all__ = ["train", "cache_dir_for"]


def cache_dir_for(cfg: dict[str, Any], run: Path) -> Path | None:
    """Where ``cache: disk`` keeps its files: ``data.cache_dir`` or ``RUN/cache``."""
    if cfg["data"]["cache"] != "disk":
        return None
    return Path(cfg["data"]["cache_dir"]) if cfg["data"].get("cache_dir") else run / "cache"


# what --resume may change: how long the run goes on, nothing about what it trains
LENGTH_KEYS = ("epochs", "max_minutes")


def train(cfg: dict[str, Any], out: str | Path | None = None, resume: bool = False,
          lengthen: dict[str, Any] | None = None) -> Path:
    """Train the family named by ``cfg['model']``; returns the run directory.

    With ``resume`` the run's own ``config.yaml`` is used, so a resumed run cannot
    silently change its settings; ``lengthen`` (``{"train": {"epochs": .., "max_minutes": ..}}``,
    from ``--set`` on the command line) is the one explicit exception. ``train.max_minutes``
    counts the run's training time over all its invocations.
    """
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    other = sorted(set(lengthen or {}) - {"train"}) + \
        [f"train.{key}" for key in sorted(set((lengthen or {}).get("train") or {}) - set(LENGTH_KEYS))]
    if other:
        raise InputError(f"--resume keeps the run's config; only train.epochs and train.max_minutes may be "
                         f"--set to lengthen it, got {', '.join(other)}")
    lr_factor(cfg["train"]["schedule"], 0.0)  # a bad name fails before the run folder is made
    dist_utils.init_distributed()
    run = prepare_run(cfg, out, resume)
    if resume:
        cfg = load_run_config(run, lengthen)
    family = family_module(cfg["model"])
    seed_everything(int(cfg["train"]["seed"]))
    records, info = load_split_records(cfg["data"])
    if dist_utils.is_main():
        write_config(run, cfg)
        write_json(run / "data_info.json", dataclasses.asdict(info))
        splits = pd.DataFrame([{"subject": r["subject"], "split": split} for split, rs in records.items() for r in rs])
        write_text_atomic(run / "splits.csv", splits.to_csv(index=False))
    task = family.build_task(cfg, info, run, records)
    cache_dir = cache_dir_for(cfg, run)
    train_set = make_dataset(records["train"], cfg["data"], train=True, cache_dir=cache_dir)
    val_set = make_dataset(records.get("val", []), cfg["data"], train=False, cache_dir=cache_dir)
    fit(task, train_set, val_set, cfg, run, resume=resume)
    return run
