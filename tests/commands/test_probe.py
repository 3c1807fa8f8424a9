"""medlatent.probe: cross-validated linear probes on feature tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlatent.errors import InputError
from medlatent.commands.probe import probe


def _features(tmp_path, n: int = 60, informative: bool = True):
    rng = np.random.default_rng(0)
    label = np.arange(n) % 2
    age = rng.uniform(20, 80, n)
    x = rng.normal(size=(n, 5))
    if informative:
        x[:, 0] += 3 * label
        x[:, 1] += age / 10
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    frame.insert(0, "subject", [f"s{i}" for i in range(n)])
    path = tmp_path / "features.csv"
    frame.to_csv(path, index=False)
    table = tmp_path / "table.csv"
    pd.DataFrame({"subject": frame["subject"], "label": label, "age": age}).to_csv(table, index=False)
    return path, table


def test_informative_features_give_high_auc_and_r2(tmp_path) -> None:
    features, table = _features(tmp_path)
    result = probe(features, "label", table=table, output=tmp_path / "probe.json")
    assert result["task"] == "classification" and result["auc"] > 0.9 and result["folds"] == 5
    assert (tmp_path / "probe.json").is_file()
    result = probe(features, "age", table=table)
    assert result["task"] == "regression" and result["r2"] > 0.5 and result["mae"] < 10


def test_uninformative_features_give_chance_auc(tmp_path) -> None:
    features, table = _features(tmp_path, informative=False)
    assert probe(features, "label", table=table)["auc"] < 0.75


def test_missing_target_names_the_files(tmp_path) -> None:
    features, table = _features(tmp_path)
    with pytest.raises(InputError, match="features.csv"):
        probe(features, "label")
    with pytest.raises(InputError, match="table.csv"):
        probe(features, "nope", table=table)
