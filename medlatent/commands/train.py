"""``medlatent train``: from a validated config to a trained run directory.

The run folder is made only after the config and the data have passed: the records are read
and checked, the datasets built (the memory cache reads every scan here), and only then are
``config.yaml``, ``data_info.json`` and ``splits.csv`` written. A new run that fails before its
first checkpoint leaves no folder behind.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from medlatent import distributed as dist_utils
from medlatent.commands.registry import family_of
from medlatent.commands.runs import load_run_config
from medlatent.engine import fit, seed_everything
from medlatent.errors import InputError
from medlatent.io import write_text_atomic
from medlatent.runs import cache_dir_for, prepare_run, run_path, write_config, write_json

__all__ = ["train", "LENGTH_KEYS"]

# what --resume may change: how long the run goes on, nothing about what it trains
LENGTH_KEYS = ("epochs", "max_minutes")


def _check_lengthen(lengthen: dict[str, Any] | None) -> None:
    other = sorted(set(lengthen or {}) - {"train"}) + \
        [f"train.{key}" for key in sorted(set((lengthen or {}).get("train") or {}) - set(LENGTH_KEYS))]
    if other:
        raise InputError(f"--resume keeps the run's config; only train.epochs and train.max_minutes may be "
                         f"--set to lengthen it, got {', '.join(other)}")


def train(cfg: dict[str, Any], out: str | Path | None = None, resume: bool = False,
          lengthen: dict[str, Any] | None = None) -> Path:
    """Train the family named by ``cfg['model']``; returns the run directory.

    With ``resume`` the run's own ``config.yaml`` is used, so a resumed run cannot silently
    change its settings; ``lengthen`` (``{"train": {"epochs": .., "max_minutes": ..}}``, from
    ``--set`` on the command line) is the one explicit exception. ``train.max_minutes`` counts
    the run's training time over all its invocations.
    """
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    _check_lengthen(lengthen)
    dist_utils.init_distributed()
    run = run_path(cfg, out, resume)
    if resume:
        cfg = load_run_config(run, lengthen)
    family = family_of(cfg["model"])
    created = not run.exists()
    try:
        seed_everything(int(cfg["train"]["seed"]))
        records, info = load_split_records(cfg["data"])
        cache_dir = cache_dir_for(cfg, run)
        train_set = make_dataset(records["train"], cfg["data"], train=True, cache_dir=cache_dir)
        val_set = make_dataset(records.get("val", []), cfg["data"], train=False, cache_dir=cache_dir)
        prepare_run(cfg, run, resume)
        if dist_utils.is_main():
            write_config(run, cfg)
            write_json(run / "data_info.json", dataclasses.asdict(info))
            splits = pd.DataFrame([{"subject": r["subject"], "split": split}
                                   for split, rs in records.items() for r in rs])
            write_text_atomic(run / "splits.csv", splits.to_csv(index=False))
        task = family.build_task(cfg, info, run, records)
        fit(task, train_set, val_set, cfg, run, resume=resume)
    except BaseException:
        # a new run that never saved a checkpoint is not a run: leave nothing behind
        if created and dist_utils.is_main() and not (run / "checkpoints" / "last.pt").is_file():
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run
