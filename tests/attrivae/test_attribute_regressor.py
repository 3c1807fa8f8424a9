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


def test_regressor_reads_every_decoded_traversal_step(trained_run):
    """The benchmark's EMIDEC / IXI path: the regressor, trained on the run's own split and preprocessing, is the
    measurement of ``measure_traversal`` (its ``predict`` reads ``[S, 1, D, H, W]`` decoded steps)."""
    import torch

    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.task import plain
    from medlatent.attrivae.traversal import measure_traversal
    from medlatent.commands.runs import load_run
    from medlatent.transforms.pipeline import make_dataset

    state = load_run(trained_run, "traverse")
    amap = AttributeMap.load(state.run)
    data_cfg = {**state.cfg["data"], "cache": "none"}
    records, info = load_split_records(data_cfg)
    model, report = train_attribute_regressor(records, data_cfg, info.attributes, amap.regularized, minutes=0.0,
                                              max_epochs=1)
    assert report["epochs"] == 1 and set(report["val_spearman"]) == set(amap.regularized)
    data = make_dataset(records["test"][:2], {**data_cfg, "augment": []}, train=False)
    x = torch.stack([plain(data[i]["image"]).float() for i in range(len(data))])
    sd = {name: 1.0 for name in amap.regularized}
    result = measure_traversal(state.model, x, amap, model.predict, sd, steps=3)
    assert set(result) == set(amap.regularized)
    for name, figures in result.items():
        assert figures["subjects"] == 2 and -1.0 <= figures["spearman"] <= 1.0
        assert set(figures["off_target_by"]) == set(amap.regularized) - {name}
        assert np.isfinite(figures["off_target"]) and figures["off_target"] >= 0.0


def test_regressor_is_trained_and_validated_on_its_view(phantom_manifest):
    """``view`` replaces every training and validation batch (e.g. by the Attri-VAE's reconstructions): a view that
    erases the scans leaves the judge nothing to read, so its validation predictions carry no ranking."""
    import torch

    data_cfg = {"manifest": str(phantom_manifest), "spatial_size": [32, 32, 32], "intensity": "percentile",
                "cache": "memory", "split": {"val": 0.2, "test": 0.2, "seed": 0},
                "attributes": ["cavity_volume_mm3", "wall_thickness_mm"], "label": None}
    records, info = load_split_records(data_cfg)
    seen = []

    def erase(batch):
        seen.append(tuple(batch.shape))
        return torch.zeros_like(batch)

    names = ["cavity_volume_mm3", "wall_thickness_mm"]
    _, report = train_attribute_regressor(records, data_cfg, info.attributes, names, minutes=0.0, max_epochs=1,
                                          batch_size=4, view=erase)
    n_train, n_val = len(records["train"]), len(records["val"])
    assert len(seen) == -(-n_train // 4) + -(-n_val // 4)  # every batch of one epoch and of the validation
    assert all(shape[1:] == (1, 32, 32, 32) for shape in seen)
    assert report["val_spearman"] == {name: 0.0 for name in names}  # constant readings: no ranking
