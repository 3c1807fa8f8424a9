"""transforms.splits: deterministic, subject-level, stratified splits."""

from __future__ import annotations

import numpy as np

from medlatent.transforms.splits import assign_splits


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
