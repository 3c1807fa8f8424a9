"""Subject-level train/val/test splits: deterministic, stratified by label when one is given."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _split_off(ids: np.ndarray, strata: np.ndarray | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` subjects off ``ids`` (stratified when possible); returns (rest, taken)."""
    if n <= 0:
        return ids, ids[:0]
    if n >= len(ids):
        raise ValueError(f"cannot split {n} subjects off {len(ids)}")
    try:
        rest, taken = train_test_split(ids, test_size=n, random_state=seed, stratify=strata)
    except ValueError:
        # a class with a single subject (or fewer subjects than strata) cannot be stratified
        log.warning("stratified split impossible (class too small); splitting without stratification")
        rest, taken = train_test_split(ids, test_size=n, random_state=seed)
    return rest, taken


def assign_splits(subjects: Sequence[str], labels: Sequence | None = None, val: float = 0.1, test: float = 0.1,
                  seed: int = 0) -> np.ndarray:
    """Assign every row to "train", "val" or "test", keeping all rows of a subject together.

    Args:
        subjects: ``[N]`` subject IDs (repeated IDs = several scans of one subject).
        labels: ``[N]`` class labels to stratify on (the subject's first row counts), or None.
        val, test: fractions of subjects (rounded to whole subjects).
        seed: scikit-learn ``random_state``; the result depends only on the set of subjects,
            their labels and the seed, not on the row order.

    Returns:
        ``np.ndarray[str]`` of shape ``[N]``.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions must satisfy 0 <= val, test and val + test < 1, got val={val}, test={test}")
    subjects = np.asarray([str(s) for s in subjects])
    order = np.unique(subjects)  # sorted: independent of row order
    strata = None
    if labels is not None:
        first = {}
        for s, y in zip(subjects, labels):
            first.setdefault(s, str(y))
        strata = np.asarray([first[s] for s in order])
    n = len(order)
    n_test, n_val = int(round(test * n)), int(round(val * n))
    index = np.arange(n)
    rest, test_idx = _split_off(index, strata, n_test, seed)
    rest_strata = strata[rest] if strata is not None else None
    train_idx, val_idx = _split_off(rest, rest_strata, n_val, seed)
    by_subject = dict.fromkeys(order[train_idx], "train")
    by_subject.update(dict.fromkeys(order[val_idx], "val"))
    by_subject.update(dict.fromkeys(order[test_idx], "test"))
    return np.asarray([by_subject[s] for s in subjects], dtype=str)
