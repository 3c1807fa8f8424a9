"""Subject-level train/val/test splits: deterministic, stratified by label when one is given.

Two schemes: one random split (:func:`assign_splits`, fractions of subjects) and stratified K-fold
cross-validation (:func:`assign_folds`: fold k of K is the test part, a validation part is carved
from the other folds, so over k = 0..K-1 every subject is tested exactly once)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

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


def _subject_strata(subjects: np.ndarray, labels: Sequence | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted unique subjects (independent of row order) and each one's label (its first row's), or None."""
    order = np.unique(subjects)
    if labels is None:
        return order, None
    first: dict[str, str] = {}
    for s, y in zip(subjects, labels):
        first.setdefault(s, str(y))
    return order, np.asarray([first[s] for s in order])


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
    order, strata = _subject_strata(subjects, labels)
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


def assign_folds(subjects: Sequence[str], labels: Sequence | None = None, folds: int = 5, fold: int = 0,
                 val: float = 0.1, seed: int = 0) -> np.ndarray:
    """Fold ``fold`` of a ``folds``-fold cross-validation at the subject level: "train", "val" or "test" per row.

    The subjects (sorted, so the result does not depend on row order) are dealt into ``folds``
    folds by scikit-learn ``StratifiedKFold(shuffle=True, random_state=seed)`` on their labels
    (``KFold`` without labels, or when a class has fewer subjects than folds); fold ``fold`` is
    the test part, and ``round(val * n)`` subjects of the others (stratified) are the validation
    part. Over ``fold = 0 .. folds-1`` every subject is in the test part exactly once.

    Args:
        subjects: ``[N]`` subject IDs (repeated IDs = several scans of one subject, kept together).
        labels: ``[N]`` class labels to stratify on, or None.
        folds: number of folds K (>= 2, at most the number of subjects).
        fold: which fold is tested, ``0 <= fold < folds``.
        val: fraction of all subjects held out for validation, taken from the training folds.
        seed: the shuffling seed; the same seed gives the same folds for every ``fold``.

    Returns:
        ``np.ndarray[str]`` of shape ``[N]``.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got folds={folds}, fold={fold}")
    if not 0 <= val < 1:
        raise ValueError(f"the validation fraction must satisfy 0 <= val < 1, got {val}")
    subjects = np.asarray([str(s) for s in subjects])
    order, strata = _subject_strata(subjects, labels)
    n = len(order)
    if folds > n:
        raise ValueError(f"cannot make {folds} folds of {n} subjects")
    index = np.arange(n)
    if strata is not None and np.unique(strata, return_counts=True)[1].min() >= folds:
        parts = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, strata))
    else:
        if strata is not None:
            log.warning("stratified folds impossible (a class has fewer than %d subjects); folds without "
                        "stratification", folds)
        parts = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(index))
    rest, test_idx = parts[fold]
    n_val = int(round(val * n))
    train_idx, val_idx = _split_off(rest, strata[rest] if strata is not None else None, n_val, seed)
    by_subject = dict.fromkeys(order[train_idx], "train")
    by_subject.update(dict.fromkeys(order[val_idx], "val"))
    by_subject.update(dict.fromkeys(order[test_idx], "test"))
    return np.asarray([by_subject[s] for s in subjects], dtype=str)
