"""configs/attrivae_emidec.yaml: two epochs on six real EMIDEC cases, fold 0 of 3, then evaluate."""

import json
from pathlib import Path

import pandas as pd
import yaml

from medlatent.commands.cli import main
from medlatent.transforms.attributes import compute_attributes, parse_label_groups

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "attrivae_emidec.yaml"
CASES = ["Case_N006", "Case_N012", "Case_N013", "Case_P001", "Case_P002", "Case_P003"]


def test_emidec_config_trains_two_epochs_on_six_cases(emidec_dir, tmp_path):
    manifest = pd.DataFrame({"subject": CASES,
                             "image": [str(emidec_dir / "images" / f"{c}.nii.gz") for c in CASES],
                             "mask": [str(emidec_dir / "labels" / f"{c}.nii.gz") for c in CASES]})
    shape = compute_attributes(manifest, parse_label_groups(["cavity=1", "myocardium=2,3,4", "infarct=3,4",
                                                             "wall=1,2,3,4:1"]))
    clinical = pd.read_csv(emidec_dir / "clinical.csv")
    table = manifest.merge(clinical, on="subject").merge(shape, on="subject")
    cfg = yaml.safe_load(CONFIG.read_text())
    for ours in ("cavity_volume", "myocardium_volume", "infarct_volume"):
        table[ours] = table[f"{ours}_mm3"]
    table.to_csv(tmp_path / "manifest.csv", index=False)
    data = cfg["data"]
    for key in ("images", "masks", "tables"):
        data.pop(key)
    data.update(manifest=str(tmp_path / "manifest.csv"), split={"folds": 3, "fold": 0, "val": 0.2, "seed": 0})
    cfg["train"].update(epochs=2, batch_size=2, max_minutes=None, preview=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(run)]) == 0
    splits = pd.read_csv(run / "splits.csv")["split"].value_counts().to_dict()
    assert splits == {"train": 3, "test": 2, "val": 1}
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 2 and list(metrics["regularized"]) == data["attributes"][:4]
