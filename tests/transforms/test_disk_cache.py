"""The disk cache stores tensors only: a planted pickle in a run's cache never runs, and the run still works."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, TraceKeys

from medlatent.commands.cli import main
from medlatent.commands.registry import resolve
from medlatent.commands.train import train
from medlatent.transforms.disk_cache import decode, encode
from medlatent.transforms.pipeline import make_dataset

CFG = {"spatial_size": [48, 48, 36], "intensity": "percentile", "spacing": None, "cache": "disk"}


class _Planted:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path, raw: bool = False) -> None:
    """A torch.save file (or, with ``raw``, a bare pickle) whose loading runs ``touch marker``."""
    if raw:
        path.write_bytes(pickle.dumps(_Planted(marker)))
    else:
        torch.save(_Planted(marker), path)


@pytest.mark.parametrize("raw", [False, True], ids=["torch-save", "bare-pickle"])
def test_planted_file_is_the_attack_it_claims_to_be(tmp_path: Path, raw: bool) -> None:
    # the tests below can fail: loading it the way MONAI's PersistentDataset did runs the command
    marker, planted = tmp_path / "ran", tmp_path / "planted.pt"
    _plant(planted, marker, raw)
    try:
        torch.load(planted, weights_only=False)
    except RuntimeError:  # a bare pickle is read as the legacy format's magic number: the code ran first
        pass
    assert marker.is_file()


def test_round_trip_keeps_meta_and_applied_operations() -> None:
    item = {"image": MetaTensor(torch.rand(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])),
                                meta={"pixdim": np.array([1.0, 2.0, 2.0, 2.0], np.float32), "scl": np.float32(1.5),
                                      MetaKeys.SPACE: "RAS", "shape": np.array([4, 4, 4], np.uint16)}),
            "label": torch.tensor(3), "attrs": np.array([1.5, 2.5], np.float32), "subject": "s1"}
    item["image"].push_applied_operation({TraceKeys.CLASS_NAME: "Resize", TraceKeys.ORIG_SIZE: (8, 8, 8),
                                          TraceKeys.EXTRA_INFO: {"align_corners": TraceKeys.NONE}})
    back = decode(encode(item))
    assert torch.equal(back["image"].as_tensor(), item["image"].as_tensor())
    assert torch.equal(back["image"].affine, item["image"].affine)
    assert back["image"].meta["pixdim"].dtype == np.float32 and back["image"].meta["shape"].dtype == np.uint16
    op = back["image"].applied_operations[0]
    assert op["class"] == "Resize" and op[TraceKeys.ORIG_SIZE] == (8, 8, 8)
    assert op["extra_info"]["align_corners"] == TraceKeys.NONE
    assert back["subject"] == "s1" and back["attrs"].tolist() == [1.5, 2.5]
    with pytest.raises(TypeError, match="tensors, numbers and strings only"):
        encode({"bad": object()})


def test_cache_files_load_weights_only_and_a_planted_pickle_never_runs(ixi_records: list[dict], tmp_path: Path) -> None:
    reference = make_dataset(ixi_records, {**CFG, "cache": "none"}, train=False)
    disk = make_dataset(ixi_records, CFG, train=False, cache_dir=tmp_path / "cache")
    first = [disk[i]["image"].as_tensor() for i in range(len(disk))]
    files = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == len(ixi_records)
    for path in files:
        torch.load(path, weights_only=True)  # raises if anything but tensors and builtins was stored
    marker = tmp_path / "code-ran"
    for i, path in enumerate(files):
        _plant(path, marker, raw=i % 2 == 1)
    again = make_dataset(ixi_records, CFG, train=False, cache_dir=tmp_path / "cache")
    for i in range(len(again)):
        assert torch.equal(again[i]["image"].as_tensor(), first[i])
        assert torch.equal(again[i]["image"].as_tensor(), reference[i]["image"].as_tensor())
    assert not marker.exists(), "a planted cache file ran code"
    for path in files:  # rebuilt as tensor-only files
        torch.load(path, weights_only=True)


@pytest.fixture()
def ixi_records(ixi_dir: Path, tmp_path: Path) -> list[dict]:
    import shutil

    records = []
    for i, image in enumerate(sorted((ixi_dir / "T1").glob("*.nii.gz"))[:2]):
        local = tmp_path / image.name
        shutil.copy(image, local)
        records.append({"image": str(local), "label": i, "attrs": np.array([float(i)], np.float32),
                        "subject": image.name})
    return records


RAW = {
    "model": "vqvae3d",
    "data": {"spatial_size": [16, 16, 16], "cache": "disk", "split": {"val": 0.25, "test": 0.25, "seed": 0}},
    "net": {"channels": [8], "embedding_dim": 4, "num_codes": 16, "num_res_units": 1},
    "train": {"epochs": 1, "batch_size": 4, "lr": 1.0e-3, "seed": 0, "num_workers": 0, "preview": False},
}


def test_evaluate_and_resume_of_a_run_with_planted_cache_files_run_no_code(tmp_path: Path) -> None:
    from medlatent.transforms.phantoms import write_phantom_dataset

    raw = copy.deepcopy(RAW)
    raw["data"]["manifest"] = str(write_phantom_dataset(tmp_path / "phantoms", n_subjects=8, shape=(16, 16, 16), seed=0))
    run = train(resolve(raw), tmp_path / "run")
    files = sorted((run / "cache").rglob("*.pt"))
    assert len(files) == 6  # the train and val items were cached in the run
    marker = tmp_path / "code-ran"
    for path in files:
        _plant(path, marker)
    _plant(files[0].with_name("stray.pt"), marker)
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--set", "train.epochs=2"]) == 0
    assert not marker.exists(), "a planted cache file ran code"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
