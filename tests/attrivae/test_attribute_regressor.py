"""attrivae.attribute_regressor: a small supervised judge of attributes, trained on the run's own preprocessing."""

import numpy as np

from medlatent.attrivae.attribute_regressor import train_attribute_regressor
from medlatent.transforms.records import load_split_records


def test_regressor_trains_within_its_budget_and_reads_attributes_in_their_units(phantom_manifest):
    data_cfg = {"manifest": str(phantom_manifest), "spatial_size": [32, 32, 32], "intensity": "percentile",
                "cache": "memory", "split": {"val": 0.2, "test": 0.2, "seed": 0},
                "attributes": ["cavity_volume_mm3", "wall_thickness_mm"], "label": None}
    records, info = load_split_records(data_cfg)
    names = ["cavity_volume_mm3", "wall_thickness_mm"]
    model, report = train_attribute_regressor(records, data_cfg, info.attributes, names, minutes=0.0, max_epochs=3)
    assert report["epochs"] == 1  # a zero budget still trains one epoch, then stops
    assert set(report["val_spearman"]) == set(names)
    from medlatent.transforms.pipeline import load_volume

    x = load_volume(phantom_manifest.parent / records["test"][0]["image"], data_cfg)["image"][None]
    predicted = model.predict(x.as_tensor())
    assert set(predicted) == set(names) and all(v.shape == (1,) and np.isfinite(v).all() for v in predicted.values())
