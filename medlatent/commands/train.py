"""``medlatent train``: from a validated config to a trained run directory.

The run folder is made only after the config and the data have passed: the records are read
and checked (a subject listed twice is refused), the datasets built, which reads every train and
val scan once and runs ``data check``'s checks on it (the memory cache and the disk cache are
filled in that pass; ``data.cache: none`` reads each file once more), and only then are
``config.yaml``, ``data_info.json``, ``splits.csv`` and ``fingerprint.json`` (what the training
scans look like, ``transforms/fingerprint.py``) written. A new run that fails before its
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
from medlatent.runs import FINGERPRINT_FILE, cache_dir_for, prepare_run, run_path, write_config, write_json

__all__ = ["train", "LENGTH_KEYS"]

# what --resume may change: how long the run goes on, nothing about what it trains
LENGTH_KEYS = ("epochs", "max_minutes")


def _check_lengthen(lengthen: dict[str, Any] | None) -> None:
    other = sorted(set(lengthen or {}) - {"train"}) + \
        [f"train.{key}" for key in sorted(set((lengthen or {}).get("train") or {}) - set(LENGTH_KEYS))]
    if other:
        raise InputError(f"--resume keeps the run's config; only train.epochs and train.max_minutes may be "
                         f"--set to lengthen it, got {', '.join(other)}")


def _checked_datasets(records: dict[str, list[dict]], source: str, cfg: dict[str, Any],
                      cache_dir: Path | None) -> tuple[Any, Any]:
    """The train and val datasets, every scan of both read and checked once, in the cache-building pass.

    Raises:
        InputError: one message listing every bad scan of both splits, by manifest row (header =
            row 1, as ``data check`` counts), subject and file.
    """
    from medlatent.transforms.pipeline import make_dataset

    datasets, problems = {}, []
    for split in ("train", "val"):
        try:
            datasets[split] = make_dataset(records.get(split, []), cfg["data"], train=split == "train",
                                           cache_dir=cache_dir, check=True)
        except InputError as err:
            problems.append(f"{split} split: {err}")
    if problems:
        raise InputError(f"{source}: train refuses this data; nothing was written "
                         f"(`medlatent data check` lists every problem of the manifest):\n" + "\n".join(problems))
    return datasets["train"], datasets["val"]


def train(cfg: dict[str, Any], out: str | Path | None = None, resume: bool = False,
          lengthen: dict[str, Any] | None = None) -> Path:
    """Train the family named by ``cfg['model']``; returns the run directory.

    With ``resume`` the run's own ``config.yaml`` is used, so a resumed run cannot silently
    change its settings; ``lengthen`` (``{"train": {"epochs": .., "max_minutes": ..}}``, from
    ``--set`` on the command line) is the one explicit exception. ``train.max_minutes`` counts
    the run's training time over all its invocations.
    """
    from medlatent.transforms.fingerprint import summarize
    from medlatent.transforms.records import load_split_records

    _check_lengthen(lengthen)
    dist_utils.init_distributed()
    run = run_path(cfg, out, resume)
    if resume:
        cfg = load_run_config(run, lengthen)
    family = family_of(cfg["model"])
    created = not run.exists()
    cache_dir = cache_dir_for(cfg, run)
    cache_created = cache_dir is not None and not cache_dir.exists()
    try:
        seed_everything(int(cfg["train"]["seed"]))
        records, info = load_split_records(cfg["data"])
        train_set, val_set = _checked_datasets(records, info.source, cfg, cache_dir)
        prepare_run(cfg, run, resume)
        if dist_utils.is_main():
            write_config(run, cfg)
            write_json(run / "data_info.json", dataclasses.asdict(info))
            splits = pd.DataFrame([{"subject": r["subject"], "split": split}
                                   for split, rs in records.items() for r in rs])
            write_text_atomic(run / "splits.csv", splits.to_csv(index=False))
            if train_set.volume_facts:  # what the training scans looked like, for the commands that take a scan
                write_json(run / FINGERPRINT_FILE, summarize(train_set.volume_facts))
        task = family.build_task(cfg, info, run, records)
        fit(task, train_set, val_set, cfg, run, resume=resume)
    except BaseException:
        # a new run that never saved a checkpoint is not a run: leave nothing behind, not even the
        # disk cache it started in a folder that was there before (the --out folder, or data.cache_dir)
        if dist_utils.is_main() and not (run / "checkpoints" / "last.pt").is_file():
            if created:
                shutil.rmtree(run, ignore_errors=True)
            if cache_created:
                shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    return run
