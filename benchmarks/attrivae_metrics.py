"""Attri-VAE quality benchmark: Attri-VAE vs the same network with gamma = 0 on IXI and AdrenalMNIST3D.

For each dataset config (configs/attrivae_ixi.yaml, configs/attrivae_adrenal.yaml) it trains
the Attri-VAE and the unregularised baseline (loss.gamma = 0) for the same wall-clock budget,
evaluates both on the test split (``medlatent evaluate``), and writes one table: SSIM, AUC,
accuracy, interpretability, MIG, SAP, SCC, modularity. On adrenal it also trains a plain
supervised classifier (MONAI ``resnet18``, 3D, 1 channel) on the same split and budget and
reports its test AUC. On IXI it measures how much of the attention map (the default method,
HiResCAM, at the default layer; its positive and its negative evidence) of the lateral
ventricle volume falls inside the ventricles (DLMUSE labels 51, 52, 4, 11, 49, 50) compared
with their share of the brain, over the test subjects, and trains a supervised resnet18 that regresses the regularised attributes for the
same budget (test Spearman per attribute). For every dataset it also reports the Attri-VAE's
metrics on its training split and those of an ideal encoder on the test subjects (tied dims =
the attributes, with noise 0, 0.2 and 0.3), the ceiling that correlated attributes leave for MIG;
on IXI also an ideal encoder whose tied dims follow their attributes as closely as the supervised
resnet18's outputs do, i.e. what the metrics give for the signal a supervised model finds.

Runs already trained under ``--out`` are reused (evaluated again, not retrained), and so are the
resnet18 baselines' results saved there; delete ``--out`` (or a run in it) to train again.

Targets (issue 4). IXI: SCC >= 0.9 and interpretability >= 0.8 averaged over the regularised
attributes, MIG >= 0.5, each well above gamma 0; attention enrichment > 1. Adrenal: AUC >= 0.80.

EMIDEC (issue 14, ``--datasets emidec``): stratified 5-fold cross-validation at the subject level
(``data.split.fold`` = 0..4, configs/attrivae_emidec.yaml) of the Attri-VAE, the gamma-0 VAE and a
supervised resnet18 (same folds, same budget per fold). AUC and accuracy are out-of-fold (every case's
probability from the fold that tested it, pooled); SSIM and the disentanglement figures are means (and
sds) over folds, over the regularised attributes; the ideal-encoder rows are averaged over the folds'
test subjects, and a logistic regression on the true regularised attributes (same folds) gives the
classification ceiling of the attributes themselves. The paper's figures are printed in the same table.
Targets: accuracy >= 0.93, AUC >= 0.94 and at or above resnet18; SCC >= 0.97, interpretability >= 0.9,
MIG >= 0.6, SAP >= 0.6. The shape table runs/emidec/shape.csv is built from the labels when missing.

Usage (from the repo root, so that the configs' ../shared/data paths resolve):
    python benchmarks/attrivae_metrics.py [--budget-min 20] [--json OUT] [--datasets ixi adrenal emidec] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlatent.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ixi": ROOT / "configs" / "attrivae_ixi.yaml", "adrenal": ROOT / "configs" / "attrivae_adrenal.yaml",
           "emidec": ROOT / "configs" / "attrivae_emidec.yaml"}
# the label groups of runs/emidec/shape.csv (configs/attrivae_emidec.yaml's second table)
EMIDEC_LABELS = ("cavity=1", "myocardium=2,3,4", "infarct=3,4", "wall=1,2,3,4:1")
# Cetin et al., Attri-VAE, on EMIDEC (attributes clinical + shape); interpretability 0.89-0.98 per attribute
PAPER_EMIDEC = {"accuracy": 0.93, "auc": 0.94, "interpretability": (0.89, 0.98), "mig": 0.60, "sap": 0.63,
                "scc": 0.97, "modularity": 0.98}
MEANS = ("interpretability", "mig", "sap", "scc", "modularity")
COLUMNS = ("ssim", "auc", "accuracy", "interpretability", "mig", "sap", "scc", "modularity")
VENTRICLE_LABELS = (51, 52, 4, 11, 49, 50)
VENTRICLE_ATTRIBUTE = "lateral_ventricles_mm3"


def _train_and_evaluate(config: Path, run: Path, budget_min: float, gamma: float | None,
                        extra: list[str] | None = None, train_split: bool = True) -> dict[str, Any]:
    from medlatent.commands.evaluate import evaluate as cmd_evaluate
    from medlatent.commands.registry import load_config
    from medlatent.commands.train import train

    overrides = [f"train.max_minutes={budget_min}", "train.epochs=100000", "train.preview=false", *(extra or [])]
    if gamma is not None:
        overrides.append(f"loss.gamma={gamma}")
    cfg = load_config(config, overrides)
    started = time.perf_counter()
    if not (run / "checkpoints" / "last.pt").is_file():
        train(cfg, run)
    seconds = time.perf_counter() - started
    # the training split first: how far the AR term fit the subjects it saw; test last, so that
    # RUN/eval/metrics.json holds the test figures
    fit = cmd_evaluate(run, "train") if train_split else None
    metrics = cmd_evaluate(run, "test")
    if fit is not None:
        metrics["train_split"] = {k: fit[k] for k in ("ssim", "auc", "accuracy", "interpretability", "mig", "sap",
                                                      "scc", "modularity", "per_attribute", "tied_spearman")}
    trained = max(0, len((run / "metrics.csv").read_text().strip().splitlines()) - 1)  # one row per epoch
    return {**metrics, "train_seconds": seconds, "epochs": trained, "best_epoch": int(metrics.get("epoch") or 0),
            "run": str(run)}


def _regularized_means(metrics: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Averages over the regularised attributes only (the issue's targets are stated that way)."""
    per = metrics.get("per_attribute") or {}
    out = {}
    for key in ("interpretability", "mig", "sap", "scc", "modularity"):
        values = [per[n][key] for n in names if n in per and per[n].get(key) is not None]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _test_attributes(run: Path) -> tuple[np.ndarray, list[str]]:
    """The regularised attributes of the run's test subjects ``[N, A]`` and their names (no model loaded)."""
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.commands.runs import load_run_config
    from medlatent.transforms.records import load_split_records

    amap = AttributeMap.load(run)
    records, _ = load_split_records(load_run_config(run)["data"])
    values = np.stack([np.asarray(r["attrs"], dtype=np.float64)[amap.columns] for r in records["test"]])
    return values, list(amap.regularized)


def _attribute_ceiling(values: np.ndarray, names: list[str], noise: float | np.ndarray, latent_dim: int,
                       draws: int = 10) -> dict[str, float]:
    """The metrics of an ideal encoder on ``values`` (the test attributes): each regularised dim is its
    attribute (standardised) plus Gaussian noise of std ``noise`` (one for all, or one per attribute),
    the other dims pure noise; averaged over ``draws`` noise draws, since 27 subjects make one draw noisy.

    Correlated attributes share mutual information with each other's dims, so this bounds what MIG
    and SAP can reach on these subjects whatever the model; a dim with noise std s follows its
    attribute with Pearson r = 1 / sqrt(1 + s^2) (s 0.3: r 0.96).
    """
    from medlatent.attrivae.disentanglement import disentanglement_report

    keys = ("interpretability", "mig", "sap", "scc")
    scores = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        tied = (values - values.mean(0)) / values.std(0) + np.asarray(noise) * rng.standard_normal(values.shape)
        latents = np.concatenate([tied, rng.standard_normal((len(values), latent_dim - len(names)))], axis=1)
        report = disentanglement_report(latents, values, names)
        scores.append([float(report[key]) for key in keys])
    return dict(zip(keys, np.mean(scores, axis=0).tolist()))


def _noise_for_correlation(r: np.ndarray) -> np.ndarray:
    """The noise std that leaves a standardised attribute with Pearson r ``r`` to itself."""
    r = np.clip(np.asarray(r, dtype=np.float64), 1e-3, 1.0)
    return np.sqrt(1.0 / r**2 - 1.0)


def _train_resnet(config: Path, budget_min: float, outputs: int,
                  loss_of: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor], seed: int = 0,
                  overrides: list[str] | None = None):
    """A supervised MONAI resnet18 (3D, 1 channel, ``outputs`` outputs) trained on the config's
    training split for ``budget_min`` minutes; returns ``(model in eval mode, test dataset, epochs)``."""
    from monai.networks.nets import resnet18

    from medlatent.commands.registry import load_config
    from medlatent.engine import make_loader, seed_everything
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    cfg = load_config(config, overrides)
    seed_everything(seed)
    records, _ = load_split_records(cfg["data"])
    train_set = make_dataset(records["train"], cfg["data"], train=True)
    test_set = make_dataset(records["test"], {**cfg["data"], "augment": []}, train=False)
    model = resnet18(spatial_dims=3, n_input_channels=1, num_classes=outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(train_set, int(cfg["train"]["batch_size"]), 0, shuffle=True, generator=torch.Generator().manual_seed(seed))
    deadline = time.perf_counter() + budget_min * 60
    epochs = 0
    while time.perf_counter() < deadline:
        model.train()
        for batch in loader:
            loss = loss_of(model(batch["image"].as_tensor().float()), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.perf_counter() > deadline:
                break
        epochs += 1
    return model.eval(), test_set, epochs


def _resnet_auc(config: Path, budget_min: float, seed: int = 0, overrides: list[str] | None = None) -> dict[str, Any]:
    """Test AUC of a supervised MONAI resnet18 (one logit) on the config's split and budget, with the
    test subjects' probabilities (``subjects``, ``probs``, ``labels``) for pooling over folds."""
    from sklearn.metrics import roc_auc_score

    from medlatent.engine import make_loader

    def bce(out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], batch["label"].float().view(-1))

    started = time.perf_counter()
    model, test_set, epochs = _train_resnet(config, budget_min, 1, bce, seed, overrides)
    probs, labels, subjects = [], [], []
    with torch.no_grad():
        for batch in make_loader(test_set, 8, 0):
            probs.append(torch.sigmoid(model(batch["image"].as_tensor().float())[:, 0]).numpy())
            labels.append(batch["label"].view(-1).numpy())
            subjects += list(batch["subject"])
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return {"auc": float(roc_auc_score(labels, probs)), "accuracy": float(((probs > 0.5) == labels).mean()),
            "epochs": epochs, "seconds": time.perf_counter() - started, "subjects": subjects,
            "probs": probs.tolist(), "labels": labels.astype(int).tolist()}


def _resnet_attributes(config: Path, budget_min: float, seed: int = 0) -> dict[str, Any]:
    """How well a supervised MONAI resnet18 reads the regularised attributes from these scans: it
    regresses them (min-max scaled on the training split, MSE) for the same budget; test Spearman
    per attribute. A reference for the AR-tied dims, which see the attributes only through their order."""
    from scipy.stats import spearmanr

    from medlatent.commands.registry import load_config
    from medlatent.engine import make_loader
    from medlatent.transforms.records import load_split_records

    cfg = load_config(config)
    names = list(cfg["loss"]["regularized"] or cfg["data"]["attributes"])
    columns = [list(cfg["data"]["attributes"]).index(n) for n in names]
    records, _ = load_split_records(cfg["data"])
    train_values = np.stack([np.asarray(r["attrs"], dtype=np.float64)[columns] for r in records["train"]])
    low = torch.as_tensor(train_values.min(0), dtype=torch.float32)
    span = torch.as_tensor(np.ptp(train_values, axis=0), dtype=torch.float32).clamp_min(1e-12)

    def mse(out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(out, (batch["attrs"].float()[:, columns] - low) / span)

    model, test_set, epochs = _train_resnet(config, budget_min, len(names), mse, seed)
    predicted, truth = [], []
    with torch.no_grad():
        for batch in make_loader(test_set, 8, 0):
            predicted.append(model(batch["image"].as_tensor().float()).numpy())
            truth.append(batch["attrs"].float()[:, columns].numpy())
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    rho = {n: float(spearmanr(predicted[:, k], truth[:, k])[0]) for k, n in enumerate(names)}
    return {"spearman": rho, "mean_spearman": float(np.mean(list(rho.values()))), "epochs": epochs}


def _saved_result(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A baseline's result saved under ``--out`` by an earlier call, else ``compute()``, saved there."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    return result


def _ventricle_enrichment(run: Path, seg_dir: Path) -> dict[str, Any]:
    """Mean share of the lateral-ventricle attention mass inside the ventricles vs their share of the
    brain, for the default map (positive evidence) and for the negative evidence (attrivae.attention)."""
    from medlatent.attrivae.attention import EVIDENCE, MapSettings, attention_map
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.task import plain
    from medlatent.commands.runs import load_run
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    state = load_run(run, "attention")
    dim = AttributeMap.load(run).dim_of(VENTRICLE_ATTRIBUTE)
    records, _ = load_split_records(state.cfg["data"])
    items = []
    for record in records["test"]:
        seg = seg_dir / (Path(record["image"]).name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz"))
        if seg.is_file():
            items.append({"image": record["image"], "mask": str(seg), "subject": record["subject"]})
    dataset = make_dataset(items, {**state.cfg["data"], "cache": "none", "augment": []}, train=False)
    inside: dict[str, list[float]] = {evidence: [] for evidence in EVIDENCE}
    share = []
    layer = state.cfg["net"].get("attention_layer")
    for index in range(len(dataset)):
        item = dataset[index]
        seg = plain(item["mask"])[0].round().long()
        ventricles = torch.isin(seg, torch.tensor(VENTRICLE_LABELS)).float()
        share.append(float(ventricles.sum() / (seg > 0).sum().clamp_min(1)))
        for evidence in EVIDENCE:
            cam = attention_map(state.model, plain(item["image"]).float()[None].to(state.device), dim,
                                MapSettings(layer=layer, evidence=evidence))[0, 0].cpu()
            inside[evidence].append(float((cam * ventricles).sum() / cam.sum().clamp_min(1e-12)))
    mean_share = float(np.mean(share))
    result: dict[str, Any] = {"subjects": len(share), "ventricle_share_of_brain": mean_share}
    for evidence, values in inside.items():
        mean_inside = float(np.mean(values))
        result[evidence] = {"mass_inside_ventricles": mean_inside,
                            "enrichment": mean_inside / mean_share if mean_share else float("nan")}
    return result


def _emidec_shape_table(raw_config: Path) -> None:
    """Write the config's shape table (runs/emidec/shape.csv) from the EMIDEC label maps when it is missing:
    ``medlatent data manifest`` + ``medlatent data attributes --labels`` EMIDEC_LABELS, as a function call."""
    import yaml

    from medlatent.io import atomic_path
    from medlatent.transforms.attributes import compute_attributes, parse_label_groups
    from medlatent.transforms.manifest import build_manifest

    data = yaml.safe_load(raw_config.read_text())["data"]
    shape = Path(data["tables"][1]["path"])
    if shape.is_file():
        return
    frame = compute_attributes(build_manifest(data["images"], data["masks"]), parse_label_groups(EMIDEC_LABELS))
    shape.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(shape, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    print(f"wrote {shape}: {len(frame)} subjects")


def _pooled(subjects: list[str], probs: list[float], labels: list[int]) -> dict[str, float]:
    """Out-of-fold AUC and accuracy (threshold 0.5) over every subject's test-fold probability."""
    from sklearn.metrics import roc_auc_score

    if len(set(subjects)) != len(subjects):
        raise RuntimeError("a subject was tested in two folds")
    probs_a, labels_a = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    return {"auc": float(roc_auc_score(labels_a, probs_a)), "accuracy": float(((probs_a > 0.5) == labels_a).mean()),
            "n": len(subjects)}


def _spread(folds: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [f[key] for f in folds if f.get(key) is not None and math.isfinite(f[key])]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


def _emidec_attribute_oof(config: Path, folds: int) -> dict[str, Any]:
    """Out-of-fold AUC of a logistic regression on the true regularised attributes (same folds): how
    much of the infarction label the attributes the Attri-VAE ties to its latent carry."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medlatent.commands.registry import load_config
    from medlatent.transforms.records import load_split_records

    subjects, probs, labels = [], [], []
    for fold in range(folds):
        cfg = load_config(config, [f"data.split.fold={fold}"])
        names = list(cfg["loss"]["regularized"] or cfg["data"]["attributes"])
        columns = [list(cfg["data"]["attributes"]).index(n) for n in names]
        records, _ = load_split_records(cfg["data"])
        train = records["train"] + records["val"]

        def xy(rs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
            return (np.stack([np.asarray(r["attrs"], np.float64)[columns] for r in rs]),
                    np.asarray([r["label"] for r in rs]))

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(*xy(train))
        x, y = xy(records["test"])
        subjects += [r["subject"] for r in records["test"]]
        probs += model.predict_proba(x)[:, 1].tolist()
        labels += y.tolist()
    return _pooled(subjects, probs, labels)


def _emidec(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Stratified K-fold CV on EMIDEC of the Attri-VAE, the gamma-0 VAE and a supervised resnet18, the
    ideal-encoder ceilings and the paper's figures; returns the JSON entry and the table's lines."""
    import pandas as pd

    from medlatent.commands.evaluate import eval_paths
    from medlatent.commands.registry import load_config

    config = CONFIGS["emidec"]
    _emidec_shape_table(config)
    cfg = load_config(config)
    folds = int(cfg["data"]["split"]["folds"] or 5)
    regularized = list(cfg["loss"]["regularized"] or cfg["data"]["attributes"])
    latent_dim = int(cfg["net"]["latent_dim"])
    tag = f"{args.budget_min:g}min"
    # one disk cache of the preprocessed volumes for every fold and model: each case is read and cropped once
    cache = ["data.cache=disk", f"data.cache_dir={(args.out / 'emidec_cache').absolute()}"]
    entry: dict[str, Any] = {}
    ceilings: dict[str, list[dict[str, float]]] = {}
    for model, gamma in (("attrivae", None), ("gamma0", 0.0)):
        started = time.perf_counter()
        per_fold, subjects, probs, labels = [], [], [], []
        for fold in range(folds):
            run = args.out / f"emidec_{model}_{tag}_f{fold}"
            # test split only: evaluating the 70 training cases of every fold would cost a tenth of the budget
            metrics = _train_and_evaluate(config, run, args.budget_min, gamma, [f"data.split.fold={fold}", *cache],
                                          train_split=False)
            rows = pd.read_csv(eval_paths(run, "test")[1])
            subjects += rows["subject"].astype(str).tolist()
            probs += rows["prob"].tolist()
            labels += rows["label"].astype(int).tolist()
            per_fold.append({"fold": fold, "auc": metrics.get("auc"), "accuracy": metrics.get("accuracy"),
                             "ssim": metrics.get("ssim"), "epochs": metrics["epochs"],
                             "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
                             "regularized_means": _regularized_means(metrics, regularized),
                             "tied_spearman": metrics.get("tied_spearman"), "run": metrics["run"]})
            if model == "attrivae":
                values, tied_names = _test_attributes(run)
                # 2 noise draws per fold, 10 in all as on IXI (one draw's mutual informations cost seconds)
                for noise in (0.0, 0.2, 0.3):
                    ceilings.setdefault(f"noise_{noise:g}", []).append(
                        _attribute_ceiling(values, tied_names, noise, latent_dim, draws=2))
        pooled = _pooled(subjects, probs, labels)
        means = {k: _spread([f["regularized_means"] for f in per_fold], k) for k in MEANS}
        entry[model] = {**pooled, "ssim": _spread(per_fold, "ssim")[0], "ssim_std": _spread(per_fold, "ssim")[1],
                        "fold_auc_mean": _spread(per_fold, "auc")[0], "fold_auc_std": _spread(per_fold, "auc")[1],
                        "regularized_means": {k: v[0] for k, v in means.items()},
                        "regularized_stds": {k: v[1] for k, v in means.items()},
                        "folds": per_fold, "minutes_total": (time.perf_counter() - started) / 60}
    started = time.perf_counter()
    per_fold, subjects, probs, labels = [], [], [], []
    for fold in range(folds):
        result = _saved_result(args.out / f"emidec_resnet18_auc_{tag}_f{fold}.json",
                               lambda: _resnet_auc(config, args.budget_min, overrides=[f"data.split.fold={fold}", *cache]))
        subjects += result["subjects"]
        probs += result["probs"]
        labels += result["labels"]
        per_fold.append({"fold": fold, **{k: result[k] for k in ("auc", "accuracy", "epochs", "seconds")}})
    entry["resnet18"] = {**_pooled(subjects, probs, labels), "fold_auc_mean": _spread(per_fold, "auc")[0],
                         "fold_auc_std": _spread(per_fold, "auc")[1], "folds": per_fold,
                         "minutes_total": (time.perf_counter() - started) / 60}
    entry["ceiling"] = {name: {k: float(np.mean([c[k] for c in runs])) for k in runs[0]}
                        for name, runs in ceilings.items()}
    entry["attributes_logistic"] = _emidec_attribute_oof(config, folds)
    entry["paper"] = PAPER_EMIDEC
    entry["regularized"] = regularized
    return entry, _emidec_table(entry, folds, args.budget_min)


def _emidec_table(entry: dict[str, Any], folds: int, budget_min: float) -> list[str]:
    """The EMIDEC rows: out-of-fold AUC / accuracy, the rest mean +- sd over folds (regularised attributes)."""
    def pm(mean: Any, std: Any) -> str:
        return f"{_fmt(mean)} +- {_fmt(std)}" if std is not None else _fmt(mean)

    lines = [f"EMIDEC, stratified {folds}-fold CV, {budget_min:g} min training per model and fold; AUC and accuracy "
             "out-of-fold over all 100 cases, the rest mean +- sd over folds, averaged over the regularised "
             f"attributes ({', '.join(entry['regularized'])})", "",
             "| model | AUC (fold mean +- sd) | accuracy | SSIM | interpretability | MIG | SAP | SCC | modularity | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("attrivae", "Attri-VAE"), ("gamma0", "VAE, gamma 0"), ("resnet18", "resnet18 (supervised)")):
        m = entry[key]
        auc = f"{_fmt(m['auc'])} ({pm(m['fold_auc_mean'], m['fold_auc_std'])})"
        if "regularized_means" in m:
            means, stds = m["regularized_means"], m["regularized_stds"]
            rest = [pm(m["ssim"], m["ssim_std"])] + [pm(means[k], stds[k]) for k in MEANS]
        else:
            rest = ["n/a"] * 6
        lines.append(f"| {label} | {auc} | {_fmt(m['accuracy'])} | " + " | ".join(rest) + f" | {m['minutes_total']:.1f} |")
    p = entry["paper"]
    lines.append(f"| paper (Cetin et al.) | {_fmt(p['auc'])} | {_fmt(p['accuracy'])} | n/a | "
                 f"{p['interpretability'][0]:.2f}-{p['interpretability'][1]:.2f} | {_fmt(p['mig'])} | {_fmt(p['sap'])} | "
                 f"{_fmt(p['scc'])} | {_fmt(p['modularity'])} | |")
    for name, ideal in entry["ceiling"].items():
        lines.append(f"| ideal encoder ({name.replace('_', ' ')}), test folds | | | | "
                     + " | ".join(_fmt(ideal.get(k)) for k in ("interpretability", "mig", "sap", "scc")) + " | | |")
    a = entry["attributes_logistic"]
    lines.append(f"| logistic regression on the true regularised attributes | {_fmt(a['auc'])} | {_fmt(a['accuracy'])} "
                 "| | | | | | | |")
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=20.0, help="training minutes per model (default 20)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "attrivae_metrics.json")
    parser.add_argument("--datasets", nargs="+", default=["ixi", "adrenal"], choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_attrivae", help="runs are kept here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a CPU shared with other jobs one thread per process "
                             "ran a training step ~10x faster than two)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from medlatent.commands.registry import load_config

    began = time.perf_counter()
    results: dict[str, Any] = {"budget_min": args.budget_min, "threads": args.threads, "datasets": {}}
    rows = []
    emidec_lines: list[str] = []
    for name in args.datasets:
        if name == "emidec":
            results["datasets"][name], emidec_lines = _emidec(args)
            continue
        cfg = load_config(CONFIGS[name])
        regularized = cfg["loss"]["regularized"] or cfg["data"]["attributes"]
        tag = f"{args.budget_min:g}min"
        entry: dict[str, Any] = {}
        for model, gamma in (("attrivae", None), ("gamma0", 0.0)):
            metrics = _train_and_evaluate(CONFIGS[name], args.out / f"{name}_{model}_{tag}", args.budget_min, gamma)
            metrics["regularized_means"] = _regularized_means(metrics, regularized)
            entry[model] = metrics
            rows.append((name, "Attri-VAE" if model == "attrivae" else "VAE, gamma 0", metrics))
        values, tied_names = _test_attributes(Path(entry["attrivae"]["run"]))
        entry["ceiling"] = {f"noise_{noise:g}": _attribute_ceiling(values, tied_names, noise, int(cfg["net"]["latent_dim"]))
                            for noise in (0.0, 0.2, 0.3)}
        if name == "adrenal":
            entry["resnet18"] = _saved_result(args.out / f"{name}_resnet18_auc_{tag}.json",
                                              lambda: _resnet_auc(CONFIGS[name], args.budget_min))
            rows.append((name, "resnet18 (supervised)", entry["resnet18"]))
        if name == "ixi":
            entry["resnet18_attributes"] = _saved_result(args.out / f"{name}_resnet18_attributes_{tag}.json",
                                                         lambda: _resnet_attributes(CONFIGS[name], args.budget_min))
            # an ideal encoder whose tied dims are as good as the supervised regressor's outputs
            # (its test Spearman taken as r): what the metrics give for that much signal
            supervised_r = np.array([entry["resnet18_attributes"]["spearman"][n] for n in tied_names])
            entry["ceiling"]["resnet18_level"] = _attribute_ceiling(
                values, tied_names, _noise_for_correlation(supervised_r), int(cfg["net"]["latent_dim"]))
            seg_dir = Path(cfg["data"]["images"]).parent.parent / "dlmuse_seg"
            entry["ventricle_attention"] = _ventricle_enrichment(Path(entry["attrivae"]["run"]), seg_dir)
        results["datasets"][name] = entry

    lines = [f"Attri-VAE benchmark, {args.budget_min:g} min training per model, test split", "",
             "| data | model | epochs (best) | " + " | ".join(c.upper() if c in ("auc", "mig", "sap", "scc") else c for c in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for data, model, m in rows:
        epochs = f"{m['epochs']} ({m['best_epoch']})" if "best_epoch" in m else str(m.get("epochs", ""))
        lines.append(f"| {data} | {model} | {epochs} | " + " | ".join(_fmt(m.get(c)) for c in COLUMNS) + " |")
    for name, entry in results["datasets"].items():
        if name == "emidec":
            continue
        for model in ("attrivae", "gamma0"):
            means = entry[model]["regularized_means"]
            lines.append(f"\n{name} {model}: over the regularised attributes: interpretability {_fmt(means['interpretability'])}, "
                         f"MIG {_fmt(means['mig'])}, SAP {_fmt(means['sap'])}, SCC {_fmt(means['scc'])}")
        tied = entry["attrivae"].get("tied_spearman") or {}
        if tied:
            lines.append(f"\n{name} attrivae, each regularised attribute against its own dim, test Spearman: "
                         + ", ".join(f"{n} {_fmt(v)}" for n, v in tied.items())
                         + f"; mean {_fmt(float(np.mean(list(tied.values()))))}")
        fit = entry["attrivae"]["train_split"]
        lines.append(f"\n{name} attrivae on its training split: interpretability {_fmt(fit['interpretability'])}, "
                     f"MIG {_fmt(fit['mig'])}, SAP {_fmt(fit['sap'])}, SCC {_fmt(fit['scc'])}, AUC {_fmt(fit['auc'])}")
        for noise, ideal in entry["ceiling"].items():
            lines.append(f"\n{name} ideal encoder ({noise.replace('_', ' ')}) on the test subjects: interpretability "
                         f"{_fmt(ideal['interpretability'])}, MIG {_fmt(ideal['mig'])}, SAP {_fmt(ideal['sap'])}, "
                         f"SCC {_fmt(ideal['scc'])}")
        if "ventricle_attention" in entry:
            v = entry["ventricle_attention"]
            for evidence in ("positive", "negative"):
                lines.append(f"\n{name}: attention map (HiResCAM, {evidence} evidence) of {VENTRICLE_ATTRIBUTE} over "
                             f"{v['subjects']} test subjects: {_fmt(v[evidence]['mass_inside_ventricles'])} of the map "
                             f"mass inside the ventricles, which are {_fmt(v['ventricle_share_of_brain'])} of the brain: "
                             f"enrichment x{_fmt(v[evidence]['enrichment'])}")
        if "resnet18_attributes" in entry:
            r = entry["resnet18_attributes"]
            lines.append(f"\n{name}: supervised resnet18 regressing the regularised attributes ({r['epochs']} epochs), "
                         "test Spearman: " + ", ".join(f"{n} {_fmt(v)}" for n, v in r["spearman"].items())
                         + f"; mean {_fmt(r['mean_spearman'])}")
        if "resnet18" in entry:
            lines.append(f"\n{name}: AUC Attri-VAE {_fmt(entry['attrivae'].get('auc'))} vs resnet18 "
                         f"{_fmt(entry['resnet18']['auc'])} (same split and budget)")
    if not rows:
        lines = []
    if emidec_lines:
        lines += ([""] if lines else []) + emidec_lines
    results["minutes_total"] = (time.perf_counter() - began) / 60
    lines.append(f"\ntotal time {results['minutes_total']:.1f} min ({args.threads} torch thread(s))")
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    from medlatent.runs import finite

    write_text_atomic(args.json, json.dumps(finite(results), indent=2, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
