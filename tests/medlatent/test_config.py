"""medlatent.config: --set overrides, strict merging, typed sections that name the bad key."""

from __future__ import annotations

import pytest

from medlatent.config import TrainSection, merge_into, parse_overrides, section_defaults, validate_sections
from medlatent.errors import InputError


def test_parse_overrides_nests_keys_and_parses_yaml_values():
    assert parse_overrides(["train.lr=1e-4", "data.augment=[flip, noise]", "data.spacing=null"]) == {
        "train": {"lr": 1e-4}, "data": {"augment": ["flip", "noise"], "spacing": None}}


def test_override_without_equals_is_an_input_error():
    with pytest.raises(InputError, match="train.lr"):
        parse_overrides(["train.lr"])


def test_strict_merge_names_the_unknown_key():
    base = section_defaults({"train": TrainSection})
    with pytest.raises(InputError, match="train.learning_rate"):
        merge_into(base, {"train": {"learning_rate": 1}}, prefix="", strict=True)


def test_a_section_given_as_a_value_is_refused():
    base = section_defaults({"train": TrainSection})
    with pytest.raises(InputError, match="'train' is a section and must be a mapping"):
        merge_into(base, {"train": 5}, strict=True, source="--set")


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "abc", "valid integer"),
    ("epochs", -1, "greater than or equal to 1"),
    ("lr", -1, "greater than 0"),
    ("batch_size", 0, "greater than or equal to 1"),
    ("schedule", "linear", "'none', 'cosine' or 'step'"),
    ("max_minutes", 0, "greater than 0"),
    ("precision", "fp64", "'auto', 'fp32', 'bf16' or 'fp16'"),
    ("channels_last", "sometimes", "must be auto, true or false"),
    ("compile", "maybe", "valid boolean"),
])
def test_train_section_names_the_key_and_what_is_wrong(key, value, message):
    cfg = section_defaults({"train": TrainSection})
    cfg["train"][key] = value
    with pytest.raises(InputError, match=f"'train.{key}'") as caught:
        validate_sections(cfg, {"train": TrainSection}, source="c.yaml")
    assert message in str(caught.value) and "c.yaml" in str(caught.value)


def test_valid_values_are_coerced_to_their_types():
    cfg = validate_sections({"train": {"lr": 1, "epochs": 3.0}}, {"train": TrainSection})
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)


def test_precision_layout_and_compile_take_auto_and_booleans():
    cfg = validate_sections({"train": {"precision": "bf16", "channels_last": True, "compile": "true"}},
                            {"train": TrainSection})
    assert (cfg["train"]["precision"], cfg["train"]["channels_last"], cfg["train"]["compile"]) == ("bf16", True, True)
    assert TrainSection().channels_last == "auto" and TrainSection().precision == "auto"
