"""Odd subject IDs (``../x``, ``/abs``, spaces) stay inside their folder and load through the pipeline."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medlatent.io import child_path
from medlatent.transforms.manifest import read_manifest
from medlatent.transforms.records import load_split_records

ODD = ["../x", "/abs", "with space", "..", "a/../../b"]


def test_odd_subject_ids_map_to_files_inside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = [child_path(out, s, ".nii.gz") for s in ODD]
    assert all(out.resolve() in p.parents for p in paths)
    for p in paths:
        assert "/" not in p.name and " " not in p.name and not p.name.startswith(".")


def test_odd_subject_ids_survive_manifest_and_records(tmp_path: Path) -> None:
    image = tmp_path / "img with space.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), np.eye(4)), image)
    pd.DataFrame({"subject": ODD, "image": [image.name] * len(ODD)}).to_csv(tmp_path / "m.csv", index=False)
    assert read_manifest(tmp_path / "m.csv")["subject"].tolist() == ODD
    records, info = load_split_records({"manifest": str(tmp_path / "m.csv"), "split": {"val": 0, "test": 0}})
    assert sorted(r["subject"] for r in records["train"]) == sorted(ODD)
    assert all(r["image"] == str(image) for r in records["train"])
