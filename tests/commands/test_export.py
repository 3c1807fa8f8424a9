"""``medlatent export``: a run as a MONAI bundle (metadata by the specification, the run's weights, its outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medlatent.commands.cli import main
from medlatent.commands.export import REQUIRED_METADATA, TENSOR_KEYS
from medlatent.commands.registry import resolve
from medlatent.runs import load_checkpoint, write_config
from medlatent.vqvae3d.family import build_model


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory, phantom_manifest) -> Path:
    """A flat VQ-VAE run on the 32^3 phantoms whose checkpoint is its initial weights (export needs no training)."""
    cfg = resolve({"model": "vqvae3d",
                   "data": {"manifest": str(phantom_manifest), "spatial_size": [32, 32, 32],
                            "split": {"val": 0.2, "test": 0.2, "seed": 0}},
                   "net": {"channels": [8], "embedding_dim": 4, "num_codes": 16, "num_res_units": 1}})
    run = tmp_path_factory.mktemp("vq") / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "epoch": 0}, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, vqvae_run, trained_run) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    made = {}
    for family, run in (("vqvae3d", vqvae_run), ("attrivae", trained_run)):
        assert main(["export", str(run), "-o", str(out / family), "--authors", "Test Authors"]) == 0
        made[family] = out / family
    return made


def _check_tensor_format(name: str, fmt: dict) -> None:
    missing = [k for k in TENSOR_KEYS if k not in fmt]
    assert not missing, f"{name}: missing {missing}"
    assert isinstance(fmt["type"], str) and isinstance(fmt["format"], str) and isinstance(fmt["modality"], str)
    assert isinstance(fmt["num_channels"], int) and fmt["num_channels"] >= 1
    assert isinstance(fmt["spatial_shape"], list)
    assert all(isinstance(s, (int, str)) for s in fmt["spatial_shape"])
    assert fmt["dtype"] in ("float32", "int16", "int32", "int64", "uint8")
    assert isinstance(fmt["value_range"], list) and len(fmt["value_range"]) in (0, 2)
    assert isinstance(fmt["is_patch_data"], bool)
    assert isinstance(fmt["channel_def"], dict) and len(fmt["channel_def"]) == fmt["num_channels"]


@pytest.mark.parametrize("family", ["vqvae3d", "attrivae"])
def test_metadata_has_every_key_the_specification_requires(bundles, family):
    meta = json.loads((bundles[family] / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    assert not missing, missing
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                "copyright", "intended_use"):
        assert isinstance(meta[key], str) and meta[key], key
    assert isinstance(meta["changelog"], dict) and meta["version"] in meta["changelog"]
    assert isinstance(meta["optional_packages_version"], dict)
    assert meta["required_packages_version"]["medlatent"] and "fire" in meta["required_packages_version"]
    assert meta["authors"] == "Test Authors" and "research use only" in meta["intended_use"].lower()
    formats = meta["network_data_format"]
    assert set(formats) == {"inputs", "outputs"} and "image" in formats["inputs"] and "pred" in formats["outputs"]
    for group in formats.values():
        for name, fmt in group.items():
            _check_tensor_format(name, fmt)
    assert formats["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
    assert formats["outputs"]["reconstruction"]["format"] == "magnitude"
    if family == "vqvae3d":
        assert formats["outputs"]["codes"]["format"] == "latent"
        assert formats["outputs"]["pred"]["num_channels"] == 2
    else:
        assert formats["outputs"]["attention_class"]["format"] == "magnitude"
        assert formats["outputs"]["latent_mean"]["format"] == "latent"
        assert formats["outputs"]["probability"]["type"] == "probabilities"
    json.dumps(meta, allow_nan=False)  # strict JSON: no NaN


@pytest.mark.parametrize("family", ["vqvae3d", "attrivae"])
def test_model_pt_is_the_runs_state_dict(bundles, vqvae_run, trained_run, family):
    run = {"vqvae3d": vqvae_run, "attrivae": trained_run}[family]
    saved = torch.load(bundles[family] / "models" / "model.pt", weights_only=True)
    expected = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert set(saved) == set(expected)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    card = (bundles[family] / "docs" / "README.md").read_text()
    assert "Research use only" in card and "Split sizes" in card and "## Test metrics" in card
    assert (bundles[family] / "LICENSE").read_text().strip()


def test_output_folder_rules(vqvae_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    assert main(["export", str(vqvae_run), "-o", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and (taken / "keep.txt").is_file()
    assert main(["export", str(vqvae_run), "-o", str(vqvae_run / "bundle")]) == 2  # never inside the run
    assert "may not be the run" in capsys.readouterr().err and not (vqvae_run / "bundle").exists()
    assert main(["export", str(vqvae_run), "-o", str(taken), "--overwrite"]) == 0
    assert not (taken / "keep.txt").exists() and (taken / "configs" / "metadata.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    (tmp_path / "notarun").mkdir()
    assert main(["export", str(tmp_path / "notarun"), "-o", str(tmp_path / "b")]) == 2
    assert "not a run directory" in capsys.readouterr().err
