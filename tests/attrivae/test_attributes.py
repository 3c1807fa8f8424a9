import numpy as np
import pytest
import torch

from medlatent.attrivae.attributes import AttributeMap, fit_attribute_map
from medlatent.errors import InputError


def _records(values_by_split):
    return {split: [{"subject": f"{split}{i}", "attrs": np.asarray(v, np.float32)} for i, v in enumerate(vals)]
            for split, vals in values_by_split.items()}


def test_scaler_is_fitted_on_train_only_and_saved(tmp_path):
    records = _records({"train": [[0, 10], [4, 30]], "test": [[100, -5]]})
    amap = fit_attribute_map(records, ["a", "b"], None, latent_dim=8)
    assert amap.minimum == [0, 10] and amap.maximum == [4, 30] and amap.dims == [0, 1]
    scaled = amap.scale(torch.tensor([[2.0, 20.0], [100.0, -5.0]]))
    assert torch.allclose(scaled[0], torch.tensor([0.5, 0.5]))
    amap.save(tmp_path)
    assert AttributeMap.load(tmp_path) == amap


def test_missing_values_name_the_subjects():
    records = _records({"train": [[0, 1], [np.nan, 2], [3, 4]]})
    with pytest.raises(InputError, match="train1"):
        fit_attribute_map(records, ["a", "b"], None, latent_dim=8)
    # an unregularised attribute may be missing
    fit_attribute_map(_records({"train": [[0, np.nan], [1, 2]]}), ["a", "b"], ["a"], latent_dim=8)


def test_dim_of_lists_what_is_regularized():
    amap = fit_attribute_map(_records({"train": [[0, 1], [1, 2]]}), ["a", "b"], ["b"], latent_dim=4)
    assert amap.dim_of("b") == 0
    with pytest.raises(InputError, match="not regularized.*regularized attributes: b"):
        amap.dim_of("a")
    with pytest.raises(InputError, match="unknown attribute 'zz'.*: b"):
        amap.dim_of("zz")
