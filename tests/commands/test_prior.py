"""train-prior / sample / evaluate --prior end to end on real IXI volumes with a small (untrained) VQ-VAE run.

The VQ-VAE is left at its initial weights (saved as its checkpoint): the commands only need a
run that encodes and decodes, and training one would take most of the test budget.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medlatent.commands.cli import main
from medlatent.commands.registry import resolve
from medlatent.runs import read_json, write_config
from medlatent.vqvae3d.family import build_model
from medlatent.vqvae3d.prior_common import one_thread

IXI = Path(__file__).resolve().parents[3] / "shared" / "data" / "ixi_t1_2mm"
SIZE = [16, 16, 16]
TINY = ["--set", "train.epochs=2", "--set", "train.batch_size=4", "--set", "prior.eval.num_samples=4",
        "--set", "prior.eval.permutations=50"]



@pytest.fixture(autouse=True)
def _single_thread():
    # tiny models: threading each small op only costs time on a shared 2-core machine
    with one_thread():
        yield


def _make_run(folder: Path, levels: int, label: str | None = "Sex") -> Path:
    """A VQ-VAE run over 10 IXI subjects at 16^3 whose checkpoint is the initial weights."""
    with open(IXI / "participants.csv") as handle:
        rows = list(csv.DictReader(handle))[:10]
    manifest = folder / "manifest.csv"
    folder.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "image", "Sex"])
        for row in rows:
            writer.writerow([row["MRID"], str(IXI / "T1" / f"{row['MRID']}_T1.nii.gz"), row["Sex"]])
    raw = {"model": "vqvae3d",
           "data": {"manifest": str(manifest), "label": label, "spatial_size": SIZE,
                    "split": {"val": 0.2, "test": 0.2, "seed": 0}},
           "net": {"levels": levels, "channels": [8], "embedding_dim": 4,
                   "num_codes": 16 if levels == 1 else [8, 16], "num_res_units": 1}}
    cfg = resolve(raw)
    run = folder / f"run{levels}"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> Path:
    """A flat VQ-VAE run with a trained (2 epochs) class-conditional PixelCNN prior."""
    with one_thread():
        run = _make_run(tmp_path_factory.mktemp("flat"), levels=1)
        assert main(["train-prior", str(run), "--prior", "pixelcnn", "--set", "prior.pixelcnn.channels=8",
                     "--set", "prior.pixelcnn.layers=2", *TINY]) == 0
    return run


def test_train_prior_writes_checkpoints_metrics_and_cache(flat_run: Path) -> None:
    prior = flat_run / "prior" / "pixelcnn"
    assert (flat_run / "prior" / "codes.pt").is_file()  # the encoded grids, shared by the kinds
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "prior_info.json",
                 "metrics.csv", "figures/curves.png"):
        assert (prior / name).is_file(), name
    with open(prior / "metrics.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 and all(math.isfinite(float(r["val_bits_per_code"])) for r in history)
    info = read_json(prior / "prior_info.json")
    assert info["levels"] == [{"shape": [4, 4, 4], "num_codes": 16}]
    assert info["classes"] == ["F", "M"] and sum(info["label_counts"]) == 6


def test_resume_continues_and_guards_its_settings(flat_run: Path, capsys) -> None:
    cache_time = (flat_run / "prior" / "codes.pt").stat().st_mtime
    assert main(["train-prior", str(flat_run), "--prior", "pixelcnn", "--resume", "--set", "train.epochs=3"]) == 0
    with open(flat_run / "prior" / "pixelcnn" / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    assert (flat_run / "prior" / "codes.pt").stat().st_mtime == cache_time  # encoded once, reused
    assert main(["train-prior", str(flat_run), "--prior", "transformer", "--resume"]) == 2
    assert "no transformer prior to resume" in capsys.readouterr().err
    assert main(["train-prior", str(flat_run), "--prior", "pixelcnn"]) == 2  # would overwrite it
    err = capsys.readouterr().err
    assert "pass --resume" in err and "--prior transformer" in err  # options that exist
    assert main(["train-prior", str(flat_run), "--prior", "pixelcnn", "--resume", "--set", "prior.pixelcnn.layers=3"]) == 2
    assert "only train.* may change" in capsys.readouterr().err


def test_unknown_or_bad_prior_keys_are_rejected(tmp_path: Path, capsys) -> None:
    run = _make_run(tmp_path, levels=1)
    assert main(["train-prior", str(run), "--set", "prior.transformer.width=3"]) == 2
    assert "prior.transformer.width" in capsys.readouterr().err
    assert main(["train-prior", str(run), "--set", "prior.transformer.heads=3"]) == 2
    assert "prior.transformer.heads" in capsys.readouterr().err
    assert main(["train-prior", str(run), "--set", "prior.transformer.ordering=zigzag"]) == 2
    assert "zigzag" in capsys.readouterr().err


def test_samples_are_reproducible_niftis_of_the_configured_shape(flat_run: Path, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = "5" if name != "c" else "6"
        assert main(["sample", str(flat_run), "-n", "3", "--seed", seed, "--label", "M", "-o",
                     str(tmp_path / name)]) == 0
    files = sorted((tmp_path / "a").glob("sample_*.nii.gz"))
    assert len(files) == 3 and (tmp_path / "a" / "samples.png").is_file()
    spacing = read_json(flat_run / "prior" / "pixelcnn" / "prior_info.json")["spacing"]
    for path in files:
        image = nib.load(path)
        assert image.shape == tuple(SIZE)
        assert np.allclose(np.diag(image.affine)[:3], spacing)  # training spacing, RAS axes
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        again = nib.load(tmp_path / "b" / path.name)
        assert np.array_equal(image.get_fdata(), again.get_fdata())
    other = [nib.load(p).get_fdata() for p in sorted((tmp_path / "c").glob("sample_*.nii.gz"))]
    assert not all(np.array_equal(nib.load(p).get_fdata(), o) for p, o in zip(files, other))
    assert read_json(tmp_path / "a" / "samples.json")["labels"] == ["M", "M", "M"]


def test_bad_sampling_input_exits_2_with_a_clear_message(flat_run: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "s")
    assert main(["sample", str(flat_run), "--label", "X", "-o", out]) == 2
    assert "--label 'X'" in (err := capsys.readouterr().err) and "F, M" in err
    assert main(["sample", str(flat_run), "-n", "0", "-o", out]) == 2
    assert "-n must be at least 1" in capsys.readouterr().err
    assert main(["sample", str(flat_run), "--temperature", "0", "-o", out]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert main(["sample", str(flat_run), "--top-k", "0", "-o", out]) == 2
    assert "--top-k" in capsys.readouterr().err
    bare = _make_run(tmp_path / "bare", levels=1)
    assert main(["sample", str(bare), "-o", out]) == 2
    assert "no trained prior" in capsys.readouterr().err
    assert not list(Path(out).glob("*.nii.gz"))  # nothing written by the refused commands


def test_evaluate_prior_writes_eval_json(flat_run: Path) -> None:
    assert main(["evaluate", str(flat_run), "--prior"]) == 0
    result = read_json(flat_run / "prior" / "pixelcnn" / "eval.json")
    for key in ("test_bits_per_code", "unigram_bits_per_code", "sample_seconds_per_volume", "mmd",
                "diversity_samples", "diversity_real"):
        assert math.isfinite(result[key]), key
    assert 0 < result["mmd_p"] <= 1 and result["num_samples"] == 4 and result["num_test"] == 2
    assert math.isfinite(result["mmd_reconstructions"]) and 0 < result["mmd_reconstructions_p"] <= 1


def test_two_level_run_gets_a_top_and_a_conditioned_bottom_prior(tmp_path: Path) -> None:
    run = _make_run(tmp_path, levels=2, label=None)
    assert main(["train-prior", str(run), "--set", "train.epochs=1", "--set", "prior.transformer.dim=16",
                 "--set", "prior.transformer.depth=1", "--set", "prior.transformer.heads=2"]) == 0
    info = read_json(run / "prior" / "transformer" / "prior_info.json")
    assert [level["shape"] for level in info["levels"]] == [[2, 2, 2], [4, 4, 4]] and info["classes"] is None
    with open(run / "prior" / "transformer" / "metrics.csv") as handle:
        assert "val_bits_per_code_bottom" in next(csv.DictReader(handle))
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "s")]) == 0
    assert nib.load(tmp_path / "s" / "sample_001.nii.gz").shape == tuple(SIZE)
    assert main(["sample", str(run), "--label", "M", "-o", str(tmp_path / "s2")]) == 2  # not conditional


def test_both_kinds_of_prior_live_side_by_side_and_are_chosen_by_kind(flat_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["train-prior", str(flat_run), "--prior", "transformer", "--set", "prior.transformer.dim=16",
                 "--set", "prior.transformer.depth=1", "--set", "prior.transformer.heads=2", *TINY]) == 0
    assert (flat_run / "prior" / "pixelcnn" / "checkpoints" / "last.pt").is_file()
    assert (flat_run / "prior" / "transformer" / "checkpoints" / "last.pt").is_file()
    assert main(["sample", str(flat_run), "-n", "1", "--prior", "pixelcnn", "-o", str(tmp_path / "p")]) == 0
    assert read_json(tmp_path / "p" / "samples.json")["prior"] == "pixelcnn"
    assert main(["sample", str(flat_run), "-n", "1", "-o", str(tmp_path / "latest")]) == 0
    assert read_json(tmp_path / "latest" / "samples.json")["prior"] == "transformer"  # the one trained last
    assert main(["evaluate", str(flat_run), "--prior", "transformer"]) == 0
    assert (flat_run / "prior" / "transformer" / "eval.json").is_file()
    assert main(["sample", str(flat_run), "-n", "1", "--prior", "pixelcnn", "-o", str(tmp_path / "p")]) == 2
    assert "--overwrite" in capsys.readouterr().err  # an existing output is never replaced silently



def test_mirror_trains_on_the_training_grids_and_their_left_right_mirrors(tmp_path: Path, monkeypatch) -> None:
    """prior.mirror: the training volumes flipped along RAS axis 0 are encoded too, cached beside the other splits,
    and the prior trains on both (twice the grids, labels kept)."""
    from medlatent.commands.prior import MIRRORED
    from medlatent.runs import load_checkpoint
    from medlatent.vqvae3d.model import VQVAE3d

    def intensity_codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        # an initial-weights VQ-VAE gives every voxel one code; codes that follow the input show the flip
        pooled = torch.nn.functional.avg_pool3d(x.float(), 4)[:, 0]  # [B, 4, 4, 4]
        return [(pooled / pooled.amax() * 15).long().clamp(0, 15)]

    monkeypatch.setattr(VQVAE3d, "encode_indices", intensity_codes)
    run = _make_run(tmp_path, levels=1)
    assert main(["train-prior", str(run), "--prior", "pixelcnn", "--set", "prior.mirror=true",
                 "--set", "prior.pixelcnn.channels=8", "--set", "prior.pixelcnn.layers=2", *TINY]) == 0
    stored = load_checkpoint(run / "prior" / "codes.pt")
    train, mirrored = stored["splits"]["train"], stored["splits"][MIRRORED]
    assert mirrored["subjects"] == train["subjects"] and torch.equal(mirrored["labels"], train["labels"])
    assert not torch.equal(mirrored["codes"][0], train["codes"][0])
    # pooling commutes with the flip here, so the mirror's grids are the training grids flipped on axis 0
    assert torch.equal(mirrored["codes"][0], train["codes"][0].flip(1))
    info = read_json(run / "prior" / "pixelcnn" / "prior_info.json")
    assert sum(info["label_counts"]) == 2 * len(train["subjects"])
