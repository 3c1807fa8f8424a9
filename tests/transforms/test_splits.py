"""transforms.splits: deterministic, subject-level, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from medlatent.transforms.splits import assign_folds, assign_splits


def test_deterministic_and_order_independent() -> None:
    subjects = [f"s{i:03d}" for i in range(100)]
    a = assign_splits(subjects, None, val=0.1, test=0.2, seed=3)
    b = assign_splits(subjects[::-1], None, val=0.1, test=0.2, seed=3)[::-1]
    assert (a == b).all()
    assert {k: int((a == k).sum()) for k in ("train", "val", "test")} == {"train": 70, "val": 10, "test": 20}
    assert not (assign_splits(subjects, None, 0.1, 0.2, seed=4) == a).all()


def test_subject_level_all_scans_of_a_subject_together() -> None:
    subjects = np.repeat([f"s{i}" for i in range(30)], 3)
    splits = assign_splits(subjects, None, val=0.2, test=0.2, seed=0)
    for s in np.unique(subjects):
        assert len(set(splits[subjects == s])) == 1


def test_stratified_by_label() -> None:
    subjects = [f"s{i}" for i in range(200)]
    labels = [1 if i < 40 else 0 for i in range(200)]  # 20 % positives
    splits = assign_splits(subjects, labels, val=0.1, test=0.25, seed=0)
    labels = np.asarray(labels)
    for name, n in (("val", 20), ("test", 50)):
        assert (splits == name).sum() == n
        assert labels[splits == name].mean() == 0.2


def test_tiny_class_falls_back_to_unstratified() -> None:
    splits = assign_splits(["a", "b", "c", "d", "e"], [0, 0, 0, 0, 1], val=0.2, test=0.2, seed=0)
    assert sorted(splits) == ["test", "train", "train", "train", "val"]


def test_folds_test_every_subject_once_stratified_and_disjoint() -> None:
    subjects = [f"Case_{i:03d}" for i in range(100)]
    labels = [1 if i % 3 else 0 for i in range(100)]  # 33 / 67, as EMIDEC
    tested = []
    for fold in range(5):
        splits = assign_folds(subjects, labels, folds=5, fold=fold, val=0.1, seed=0)
        counts = {k: int((splits == k).sum()) for k in ("train", "val", "test")}
        assert counts == {"train": 70, "val": 10, "test": 20}
        test_labels = np.asarray(labels)[splits == "test"]
        assert abs(test_labels.mean() - 0.67) < 0.05  # stratified: each fold holds the overall share
        assert (np.asarray(labels)[splits == "val"]).sum() in (6, 7)
        tested += [s for s, k in zip(subjects, splits) if k == "test"]
    assert sorted(tested) == subjects  # every subject tested exactly once


def test_folds_deterministic_and_order_independent() -> None:
    subjects = [f"s{i:03d}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    a = assign_folds(subjects, labels, folds=4, fold=2, seed=1)
    b = assign_folds(subjects[::-1], labels[::-1], folds=4, fold=2, seed=1)[::-1]
    assert (a == b).all()
    assert not (assign_folds(subjects, labels, folds=4, fold=2, seed=2) == a).all()


def test_folds_keep_the_scans_of_a_subject_together_and_check_arguments() -> None:
    subjects = np.repeat([f"s{i}" for i in range(12)], 2)
    splits = assign_folds(subjects, None, folds=3, fold=1, val=0.0)
    for s in np.unique(subjects):
        assert len(set(splits[subjects == s])) == 1
    assert (splits == "test").sum() == 8 and (splits == "val").sum() == 0
    # a class smaller than the number of folds: plain K-fold
    assert (assign_folds(["a", "b", "c"], [0, 0, 1], folds=3, fold=0) == "test").sum() == 1
    for folds, fold in ((1, 0), (5, 5), (13, 0)):
        with pytest.raises(ValueError):
            assign_folds(subjects, None, folds=folds, fold=fold)
