"""``medlatent export``: a run as a MONAI bundle (metadata by the specification, the run's weights, its outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
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
    for family, run, modality in (("vqvae3d", vqvae_run, "CT"), ("attrivae", trained_run, "MR")):
        assert main(["export", str(run), "-o", str(out / family), "--authors", "Test Authors",
                     "--modality", modality]) == 0
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
    assert formats["inputs"]["image"]["modality"] == {"vqvae3d": "CT", "attrivae": "MR"}[family]
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


def _bundle_run(bundle: Path, scan: Path, out: Path) -> None:
    """``python -m monai.bundle run`` as a user types it, in a fresh interpreter, from another folder."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--meta_file", str(bundle / "configs" / "metadata.json"), "--input", str(scan), "--output_dir", str(out)]
    done = subprocess.run(command, cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _same_volume(a: Path, b: Path, reference: Path) -> None:
    left, right, ref = nib.load(a), nib.load(b), nib.load(reference)
    assert left.shape == right.shape == ref.shape
    assert np.allclose(left.affine, ref.affine, atol=1e-4) and np.allclose(right.affine, ref.affine, atol=1e-4)
    assert np.abs(left.get_fdata() - right.get_fdata()).max() <= 1e-5, (a, b)


@pytest.mark.parametrize("family", ["vqvae3d", "attrivae"])
def test_network_in_out_verifies(bundles, family):
    from monai.bundle import verify_net_in_out

    configs = bundles[family] / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu")


def test_bundle_run_writes_what_attention_and_reconstruct_write(bundles, trained_run, ixi_t1, tmp_path):
    """An Attri-VAE bundle on a real scan stored P,S,R (inverted through orientation and resize)."""
    from medlatent.attrivae.bundle import class_probabilities
    from medlatent.commands.attention import attention
    from medlatent.commands.inputs import as_batch, load_input
    from medlatent.commands.reconstruct import reconstruct
    from medlatent.commands.runs import load_run

    out = tmp_path / "out"
    _bundle_run(bundles["attrivae"], ixi_t1, out)
    stem = "IXI012-HH-1211_T1"
    reconstruct(trained_run, ixi_t1, tmp_path / "recon.nii.gz")
    _same_volume(out / f"{stem}_reconstruction.nii.gz", tmp_path / "recon.nii.gz", ixi_t1)
    attention(trained_run, ixi_t1, use_class=True, out=tmp_path / "maps")
    for name in ("cavity_volume_mm3", "wall_thickness_mm"):
        attention(trained_run, ixi_t1, attribute=name, out=tmp_path / "maps")
    for name in ("class", "cavity_volume_mm3", "wall_thickness_mm"):
        _same_volume(out / f"{stem}_attention_{name}.nii.gz", tmp_path / "maps" / f"attention_{name}.nii.gz", ixi_t1)
    record = json.loads((out / f"{stem}_latent.json").read_text())
    state = load_run(trained_run, "encode")
    x = as_batch(load_input(state, ixi_t1), state.device)
    _, arrays = state.family.features(state.model, x)
    assert np.allclose(record["latent_mean"], arrays[""], atol=1e-5)
    with torch.no_grad():
        probability = class_probabilities(state.model.classify(state.model.encode(x)[0]))[0]
    assert record["classes"] == ["0", "1"] and np.allclose(record["probability"], probability.numpy(), atol=1e-5)
    assert record["regularized"] == {"cavity_volume_mm3": 0, "wall_thickness_mm": 1}


def test_vqvae_bundle_run_writes_the_reconstruction_and_code_grid(bundles, vqvae_run, phantom_manifest, tmp_path):
    from medlatent.commands.inputs import as_batch, load_input
    from medlatent.commands.reconstruct import reconstruct
    from medlatent.commands.runs import load_run

    scan = next((phantom_manifest.parent / "images").glob("*.nii.gz"))
    out = tmp_path / "out"
    _bundle_run(bundles["vqvae3d"], scan, out)
    stem = scan.name[: -len(".nii.gz")]
    reconstruct(vqvae_run, scan, tmp_path / "recon.nii.gz")
    _same_volume(out / f"{stem}_reconstruction.nii.gz", tmp_path / "recon.nii.gz", scan)
    codes = nib.load(out / f"{stem}_codes.nii.gz")
    assert codes.shape == nib.load(scan).shape and codes.get_data_dtype() == np.int16
    state = load_run(vqvae_run, "encode")
    _, arrays = state.family.features(state.model, as_batch(load_input(state, scan), state.device))
    grid = arrays[""]  # [d, h, w] as `medlatent encode --codes` saves it
    factor = 32 // grid.shape[0]
    # the phantoms are 32^3 in RAS: each code covers factor^3 voxels of the input grid
    assert np.array_equal(np.asarray(codes.dataobj)[::factor, ::factor, ::factor], grid)


@pytest.mark.parametrize("family", ["vqvae3d", "attrivae"])
def test_torchscript_gives_the_state_dict_networks_outputs(bundles, family):
    from monai.bundle import ConfigParser
    from monai.data import load_net_with_metadata

    folder = bundles[family]
    scripted, meta, extra = load_net_with_metadata(str(folder / "models" / "model.ts"),
                                                   more_extra_files=["inference.json"])
    config = json.loads((folder / "configs" / "inference.json").read_text())
    assert meta["version"] == json.loads((folder / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"] == config["network_def"]
    net = ConfigParser({"net": config["network_def"]}).get_parsed_content("net")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        traced = scripted(x)
    expected = net(x)
    if family == "vqvae3d":  # the whole network: reconstruction and code grid
        assert traced.shape == expected.shape == (2, 2, 32, 32, 32)
        assert torch.allclose(traced, expected, atol=1e-5)
        return
    # Attri-VAE: reconstruction, encode and classify; the attention maps (captum hooks) are not traced
    assert torch.allclose(traced, expected[:, :1], atol=1e-5)
    with torch.no_grad():
        mu = net.encode(x)[0]
        assert torch.allclose(scripted.encode(x)[0], mu, atol=1e-5)
        assert torch.allclose(scripted.classify(mu), net.classify(mu), atol=1e-5)


def test_a_run_on_masked_scans_takes_the_mask_too(phantom_manifest, tmp_path):
    """``data.mask_image``: the bundle's ``mask`` id feeds the same masking step as ``--mask`` does."""
    from medlatent.commands.reconstruct import reconstruct

    cfg = resolve({"model": "vqvae3d",
                   "data": {"manifest": str(phantom_manifest), "spatial_size": [32, 32, 32], "mask_image": True,
                            "split": {"val": 0.2, "test": 0.2, "seed": 0}},
                   "net": {"channels": [8], "embedding_dim": 4, "num_codes": 16, "num_res_units": 1}})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "epoch": 0}, run / "checkpoints" / "best.pt")
    assert main(["export", str(run), "-o", str(tmp_path / "bundle")]) == 0
    config = json.loads((tmp_path / "bundle" / "configs" / "inference.json").read_text())
    assert config["datalist"] == "$[{'image': @input, 'mask': @mask}]"
    assert "--mask mask.nii.gz" in (tmp_path / "bundle" / "docs" / "README.md").read_text()
    scan = next((phantom_manifest.parent / "images").glob("*.nii.gz"))
    mask = phantom_manifest.parent / "masks" / scan.name
    out = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
               str(tmp_path / "bundle" / "configs" / "inference.json"), "--input", str(scan), "--mask", str(mask),
               "--output_dir", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reconstruct(run, scan, tmp_path / "recon.nii.gz", mask=mask)
    _same_volume(out / f"{scan.name[: -len('.nii.gz')]}_reconstruction.nii.gz", tmp_path / "recon.nii.gz", scan)
