"""Scans unlike a run's training data are warned about, naming the file and what differs; alike ones are not."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medlatent.commands.cli import main
from medlatent.commands.registry import resolve
from medlatent.commands.train import train


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    manifest = write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_subjects=8, shape=(32, 32, 32), seed=0)
    cfg = resolve({"model": "vqvae3d",
                   "data": {"manifest": str(manifest), "spatial_size": [16, 16, 16],
                            "split": {"val": 0.25, "test": 0.25, "seed": 0}},
                   "net": {"channels": [8], "embedding_dim": 4, "num_codes": 16, "num_res_units": 1},
                   "train": {"epochs": 1, "batch_size": 4, "seed": 0, "num_workers": 0, "preview": False}})
    return train(cfg, tmp_path_factory.mktemp("runs") / "vq")


@pytest.fixture(scope="module")
def other_phantoms(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("other"), n_subjects=2, shape=(32, 32, 32), seed=5)


def test_train_records_the_fingerprint(phantom_run: Path) -> None:
    fingerprint = json.loads((phantom_run / "fingerprint.json").read_text())
    assert fingerprint["n"] == 4 and fingerprint["orientations"] == ["LPS"]
    assert fingerprint["shape_sorted_min"] == [32, 32, 32] and fingerprint["spacing_sorted_max"] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("scan, words", [
    ("ct_samples/CT_pitch.nii.gz", ["intensity 99.5th percentile", "spacing", "shape (175, 248, 58)"]),
    ("ixi_t1_2mm/T1/IXI012-HH-1211_T1.nii.gz", ["intensity 99.5th percentile", "shape (120, 120, 90)",
                                                 "orientation PSR"]),
], ids=["head-CT", "brain-MRI"])
def test_reconstruct_warns_about_a_scan_unlike_the_training_data(phantom_run: Path, data_dir: Path, tmp_path: Path,
                                                                 capsys, scan: str, words: list[str]) -> None:
    source = data_dir / scan
    assert main(["reconstruct", str(phantom_run), str(source), str(tmp_path / "out.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {source} does not look like this run's training data" in err, err
    for word in words:
        assert word in err, (word, err)


def test_no_warning_for_a_scan_like_the_training_data(phantom_run: Path, other_phantoms: Path, tmp_path: Path,
                                                      capsys) -> None:
    image = other_phantoms.parent / "images" / "phantom_000.nii.gz"
    assert main(["reconstruct", str(phantom_run), str(image), str(tmp_path / "out.nii.gz")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["encode", str(phantom_run), str(other_phantoms), "-o", str(tmp_path / "f.csv")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_encode_warns_per_scan_of_a_manifest(phantom_run: Path, other_phantoms: Path, ixi_t1: Path, tmp_path: Path,
                                             capsys) -> None:
    frame = pd.read_csv(other_phantoms)
    frame["image"] = [str(other_phantoms.parent / p) for p in frame["image"]]
    frame = frame[["subject", "image"]]
    frame.loc[len(frame)] = ["ixi", str(ixi_t1)]
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    assert main(["encode", str(phantom_run), str(tmp_path / "mixed.csv"), "-o", str(tmp_path / "f.csv")]) == 0
    err = capsys.readouterr().err
    assert err.count("does not look like") == 1 and str(ixi_t1) in err, err


def test_the_loader_of_traverse_and_attention_warns(phantom_run: Path, ixi_t1: Path, capsys) -> None:
    # traverse and attention are Attri-VAE commands that read their scans through load_input
    from medlatent.commands.inputs import load_input
    from medlatent.commands.runs import load_run

    load_input(load_run(phantom_run, "reconstruct"), ixi_t1)
    assert f"warning: {ixi_t1} does not look like" in capsys.readouterr().err
