"""Configs resolved against the model families: defaults, overrides, paths, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlatent.commands.cli import main
from medlatent.commands.registry import defaults_for, load_config
from medlatent.errors import InputError


def test_load_config_applies_yaml_then_overrides_and_absolutizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("model: vqvae3d\ndata:\n  manifest: data/m.csv\ntrain:\n  epochs: 7\n")
    cfg = load_config(path, ["train.batch_size=2"])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["batch_size"] == 2
    assert cfg["data"]["manifest"] == str(tmp_path / "data" / "m.csv")
    assert cfg["train"]["lr"] == defaults_for("vqvae3d")["train"]["lr"]
    assert cfg["train"]["best_metric"] == "val_ssim"  # the family's own default for a common key


def test_unknown_model_lists_the_known_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: gan\n")
    with pytest.raises(InputError, match="vqvae3d"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=-1", "train.epochs"),
    ("train.lr=-1", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.spatial_size=abc", "data.spatial_size"),
    ("data.spatial_size=[32,32]", "data.spatial_size"),
    ("data=5", "data"),
    ("data.intensity=hist", "data.intensity"),
    ("data.augment=[flip,warp]", "data.augment"),
    ("net.num_codes=0", "net.num_codes"),
    ("data.spatial_size=[30,32,32]", "data.spatial_size"),
    ("loss.recon=l3", "loss.recon"),
])
def test_a_bad_value_exits_2_naming_the_key_before_anything_is_written(tmp_path, capsys, override, key):
    config = tmp_path / "ok.yaml"
    config.write_text("model: vqvae3d\ndata:\n  manifest: m.csv\n  spatial_size: [32, 32, 32]\n")
    out = tmp_path / "run"
    assert main(["train", str(config), "--set", override, "--out", str(out)]) == 2
    assert f"'{key}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("override, key", [
    ("loss.regularized=[age]", "loss.regularized"),
    ("net.latent_dim=1", "net.latent_dim"),
    ("net.attention_method=lime", "net.attention_method"),
    ("loss.delta=0", "loss.delta"),
    ("net.output_init=1.5", "net.output_init"),
])
def test_attrivae_sections_and_their_cross_checks(tmp_path, capsys, override, key):
    config = tmp_path / "a.yaml"
    config.write_text("model: attrivae\ndata:\n  manifest: m.csv\n  spatial_size: [32, 32, 32]\n"
                      "  attributes: [volume, thickness]\nnet:\n  channels: [8, 16]\n")
    assert main(["train", str(config), "--set", override, "--out", str(tmp_path / "r")]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _build_documented_table(config: Path, table: Path, tmp_path: Path) -> str:
    """A table the config derives from the data (e.g. EMIDEC's shape table) must be built by the
    `medlatent` commands its header documents; run them, writing under tmp_path instead of runs/."""
    import shlex

    header = "\n".join(line[1:].strip() for line in config.read_text().splitlines() if line.startswith("#"))
    commands = [c.strip() for c in header.replace("\\\n", " ").splitlines() if c.strip().startswith("medlatent ")]
    relative = str(table.relative_to(config.parents[1])) if table.is_absolute() else str(table)
    assert any(f"-o {relative}" in c for c in commands), f"{config.name}: no documented command writes {relative}"
    for command in commands:
        argv = shlex.split(command.replace(str(Path(relative).parent), str(tmp_path)))[1:]
        if argv[0] == "data":
            assert main(argv) == 0, command
    return str(tmp_path / Path(relative).name)


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_resolve_and_find_their_files(path, monkeypatch, tmp_path):
    from medlatent.transforms.manifest import build_manifest

    monkeypatch.chdir(path.parents[1])  # the configs' ../shared/data paths are relative to the repo root
    cfg = load_config(path)
    data = cfg["data"]
    for table in data.get("tables") or []:
        if not Path(table["path"]).exists():
            table["path"] = _build_documented_table(path, Path(table["path"]), tmp_path)
    if data.get("images"):
        frame = build_manifest(data["images"], data.get("masks"), data.get("tables") or [])
        assert len(frame) > 0
        if data.get("mask_image"):
            assert frame["mask"].notna().all()  # skull-stripping needs every scan's mask
