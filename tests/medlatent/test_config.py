"""Config loading: defaults, --set overrides, unknown keys named, paths made absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlatent.config import COMMON_DEFAULTS, load_config, merge_into, parse_overrides
from medlatent.errors import InputError


def test_parse_overrides_nests_keys_and_parses_yaml_values():
    assert parse_overrides(["train.lr=1e-4", "data.augment=[flip, noise]", "data.spacing=null"]) == {
        "train": {"lr": 1e-4}, "data": {"augment": ["flip", "noise"], "spacing": None}}


def test_override_without_equals_is_an_input_error():
    with pytest.raises(InputError, match="train.lr"):
        parse_overrides(["train.lr"])


def test_strict_merge_names_the_unknown_key():
    base = {"train": dict(COMMON_DEFAULTS["train"])}
    with pytest.raises(InputError, match="train.learning_rate"):
        merge_into(base, {"train": {"learning_rate": 1}}, prefix="", strict=True)


def test_load_config_applies_yaml_then_overrides_and_absolutizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("model: vqvae3d\ndata:\n  manifest: data/m.csv\ntrain:\n  epochs: 7\n")
    cfg = load_config(path, ["train.batch_size=2"])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["batch_size"] == 2
    assert cfg["data"]["manifest"] == str(tmp_path / "data" / "m.csv")
    assert cfg["train"]["lr"] == COMMON_DEFAULTS["train"]["lr"]


def test_unknown_model_lists_the_known_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: gan\n")
    with pytest.raises(InputError, match="vqvae3d"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_resolve_and_find_their_files(path, monkeypatch):
    from medlatent.transforms.manifest import build_manifest

    monkeypatch.chdir(path.parents[1])  # the configs' ../shared/data paths are relative to the repo root
    cfg = load_config(path)
    data = cfg["data"]
    if data.get("images"):
        frame = build_manifest(data["images"], data.get("masks"), data.get("tables") or [])
        assert len(frame) > 0
        if data.get("mask_image"):
            assert frame["mask"].notna().all()  # skull-stripping needs every scan's mask
