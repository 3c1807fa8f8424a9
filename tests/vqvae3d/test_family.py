"""The VQ-VAE family end to end on phantoms: train, resume, evaluate, reconstruct, encode, probe, latent map,
and the exit code 2 of bad input."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlatent.commands.cli import main
from medlatent.commands.registry import resolve
from medlatent.commands.train import train

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IXI_PSR = DATA / "ixi_t1_2mm" / "T1" / "IXI012-HH-1211_T1.nii.gz"
CT_OBLIQUE = DATA / "ct_samples" / "CT_pitch.nii.gz"

RAW = {
    "model": "vqvae3d",
    "data": {"spatial_size": [32, 32, 32], "cache": "memory", "split": {"val": 0.2, "test": 0.2, "seed": 0}},
    "net": {"channels": [16], "embedding_dim": 8, "num_codes": 32, "num_res_units": 1},
    "train": {"epochs": 3, "batch_size": 2, "lr": 1.0e-3, "seed": 0, "num_workers": 0},
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from medlatent.transforms.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_subjects=20, shape=(32, 32, 32), seed=0)


def _cfg(manifest: Path) -> dict:
    raw = copy.deepcopy(RAW)
    raw["data"]["manifest"] = str(manifest)
    return resolve(raw)


@pytest.fixture(scope="module")
def run(phantoms, tmp_path_factory) -> Path:
    return train(_cfg(phantoms), tmp_path_factory.mktemp("runs") / "vq")


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv")


def test_training_lowers_validation_loss_and_writes_the_run(run: Path) -> None:
    history = _history(run)
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    for column in ("train_loss", "val_mae", "val_mse", "val_psnr", "val_ssim", "val_perplexity",
                   "val_codes_used_frac", "train_perplexity", "train_codes_used_frac"):
        assert column in history.columns and history[column].notna().all(), column
    for name in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "figures/curves.png",
                 "figures/recon_epoch001.png", "figures/recon_epoch003.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").glob("events.out.tfevents.*"))


def test_resume_after_first_epoch_replays_the_uninterrupted_run(run: Path, phantoms: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    from medlatent.vqvae3d.task import VQVAETask

    calls = {"train": 0}
    original = VQVAETask.epoch_start

    def interrupt(self, stage):
        if stage == "train":
            calls["train"] += 1
            if calls["train"] == 2:
                raise KeyboardInterrupt("simulated interruption after epoch 1")
        original(self, stage)

    monkeypatch.setattr(VQVAETask, "epoch_start", interrupt)
    resumed = tmp_path / "vq"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(phantoms), resumed)
    monkeypatch.setattr(VQVAETask, "epoch_start", original)
    assert len(_history(resumed)) == 1
    train(_cfg(phantoms), resumed, resume=True)
    expected, got = _history(run), _history(resumed)
    columns = [c for c in expected.columns if c != "epoch_seconds"]
    pd.testing.assert_frame_equal(got[columns], expected[columns], rtol=1e-6)


def test_evaluate_writes_metrics_and_per_subject_rows(run: Path) -> None:
    assert main(["evaluate", str(run)]) == 0
    metrics = pd.read_json(run / "eval" / "metrics.json", typ="series")
    for key in ("ssim", "psnr", "mae", "mse", "perplexity", "codes_used_frac", "n"):
        assert key in metrics.index, key
    rows = pd.read_csv(run / "eval" / "per_subject.csv")
    assert len(rows) == metrics["n"] > 0
    assert {"subject", "ssim", "psnr", "mae", "mse"} <= set(rows.columns)
    assert 0 < metrics["codes_used_frac"] <= 1 and metrics["perplexity"] >= 1


@pytest.mark.parametrize("source", [IXI_PSR, CT_OBLIQUE], ids=["ixi-PSR", "ct-oblique"])
def test_reconstruct_writes_the_input_geometry(run: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.nii.gz"
    assert main(["reconstruct", str(run), str(source), str(out)]) == 0
    original, written = nib.load(source), nib.load(out)
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
    assert np.isfinite(written.get_fdata()).all() and written.get_fdata().std() > 0


def test_encode_probe_and_latent_map(run: Path, phantoms: Path, tmp_path: Path) -> None:
    features, codes = tmp_path / "features.csv", tmp_path / "codes"
    assert main(["encode", str(run), str(phantoms), "-o", str(features), "--codes", str(codes)]) == 0
    frame = pd.read_csv(features)
    assert len(frame) == 20 and frame.columns[0] == "subject"
    assert {"pre_z_0", "post_z_7", "codes_z_distinct", "codes_z_perplexity"} <= set(frame.columns)
    grid = np.load(codes / "phantom_000.npy")
    assert grid.shape == (8, 8, 8) and 0 <= grid.min() and grid.max() < 32

    report = tmp_path / "probe.json"
    assert main(["probe", str(features), "--target", "label", "--table", str(phantoms), "--folds", "3",
                 "--json", str(report)]) == 0
    result = pd.read_json(report, typ="series")
    assert result["task"] == "classification" and 0 <= result["auc"] <= 1
    assert main(["probe", str(features), "--target", "cavity_volume_mm3", "--table", str(phantoms)]) == 0

    picture = tmp_path / "map.png"
    assert main(["latent-map", str(run), str(phantoms), "--color", "label", "-o", str(picture)]) == 0
    coords = pd.read_csv(picture.with_suffix(".csv"))
    assert picture.is_file() and len(coords) == 20 and {"x", "y", "label"} <= set(coords.columns)


# --- bad input: exit 2, the path named -------------------------------------------------------

def test_run_without_checkpoint_exits_2(run: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "untrained"
    empty.mkdir()
    shutil.copy(run / "config.yaml", empty / "config.yaml")
    assert main(["evaluate", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err


def test_volume_of_wrong_dimensionality_exits_2(run: Path, tmp_path: Path, capsys) -> None:
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    assert main(["reconstruct", str(run), str(four_d), str(tmp_path / "out.nii.gz")]) == 2
    assert str(four_d) in capsys.readouterr().err


def test_manifest_with_missing_files_exits_2(run: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "manifest.csv"
    missing = tmp_path / "nowhere" / "ghost.nii.gz"
    pd.DataFrame([{"subject": "ghost", "image": str(missing)}]).to_csv(manifest, index=False)
    assert main(["encode", str(run), str(manifest), "-o", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and str(manifest) in err
