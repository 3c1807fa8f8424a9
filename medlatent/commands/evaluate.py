"""``medlatent evaluate``: a run's figures on one split -> ``RUN/eval/metrics[_SPLIT].json`` and ``per_subject[_SPLIT].csv``.

The pass over the split is the same for every family (the run's preprocessing, its batch size,
the engine's ``run_evaluation``); the family supplies the task that computes per-volume figures
and the summary of the split (``Family.evaluation_task``, ``Family.summarize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medlatent.commands.runs import load_run
from medlatent.engine import make_loader, run_evaluation
from medlatent.errors import InputError
from medlatent.io import write_text_atomic
from medlatent.runs import cache_dir_for, write_json

__all__ = ["evaluate", "eval_paths"]


def eval_paths(run: Path, split: str) -> tuple[Path, Path]:
    """``(metrics json, per-subject csv)`` of ``split``: no suffix for test, ``_val``/``_train`` otherwise."""
    suffix = "" if split == "test" else f"_{split}"
    return run / "eval" / f"metrics{suffix}.json", run / "eval" / f"per_subject{suffix}.csv"


def evaluate(run: str | Path, split: str = "test", which: str = "best") -> dict[str, Any]:
    """Evaluate the run's ``which`` checkpoint (best, or last) on ``split``; returns (and writes) the metrics.

    The metrics hold the family's figures plus ``split``, ``n``, ``checkpoint`` and ``epoch``.
    """
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    state = load_run(run, "evaluate", which)
    records, _ = load_split_records(state.data_cfg)
    if not records.get(split):
        raise InputError(f"{state.run}: split '{split}' is empty (sizes: "
                         f"{ {k: len(v) for k, v in records.items()} })")
    task = state.family.evaluation_task(state.run, state.cfg, state.model, records[split])
    dataset = make_dataset(records[split], state.data_cfg, train=False, cache_dir=cache_dir_for(state.cfg, state.run))
    loader = make_loader(dataset, int(state.cfg["train"]["batch_size"]), int(state.cfg["train"]["num_workers"]))
    means, rows = run_evaluation(task, state.model, loader, state.device, state.precision, progress=f"evaluate {split}")
    metrics = {"split": split, "n": len(rows), "checkpoint": state.checkpoint, "epoch": state.epoch,
               **state.family.summarize(task, means, rows)}
    metrics_path, rows_path = eval_paths(state.run, split)
    write_json(metrics_path, metrics)
    write_text_atomic(rows_path, pd.DataFrame(rows).to_csv(index=False))
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                      if isinstance(v, float) and k not in ("epoch",))
    print(f"{state.run}: {split} (n={len(rows)}): {shown} -> {metrics_path}")
    return metrics
