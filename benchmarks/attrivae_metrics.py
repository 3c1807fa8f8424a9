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

Usage (from the repo root, so that the configs' ../shared/data paths resolve):
    python benchmarks/attrivae_metrics.py [--budget-min 20] [--json OUT] [--datasets ixi adrenal] [--out DIR]
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
CONFIGS = {"ixi": ROOT / "configs" / "attrivae_ixi.yaml", "adrenal": ROOT / "configs" / "attrivae_adrenal.yaml"}
COLUMNS = ("ssim", "auc", "accuracy", "interpretability", "mig", "sap", "scc", "modularity")
VENTRICLE_LABELS = (51, 52, 4, 11, 49, 50)
VENTRICLE_ATTRIBUTE = "lateral_ventricles_mm3"


def _train_and_evaluate(config: Path, run: Path, budget_min: float, gamma: float | None) -> dict[str, Any]:
    from medlatent.attrivae.family import cmd_evaluate
    from medlatent.config import load_config
    from medlatent.train import train

    overrides = [f"train.max_minutes={budget_min}", "train.epochs=100000", "train.preview=false"]
    if gamma is not None:
        overrides.append(f"loss.gamma={gamma}")
    cfg = load_config(config, overrides)
    started = time.perf_counter()
    if not (run / "checkpoints" / "last.pt").is_file():
        train(cfg, run)
    seconds = time.perf_counter() - started
    # the training split first: how far the AR term fit the subjects it saw; test last, so that
    # RUN/eval/metrics.json holds the test figures
    fit = cmd_evaluate(run, "train")
    metrics = cmd_evaluate(run, "test")
    metrics["train_split"] = {k: fit[k] for k in ("ssim", "auc", "accuracy", "interpretability", "mig", "sap", "scc",
                                                  "modularity", "per_attribute", "tied_spearman")}
    trained = max(0, len((run / "metrics.csv").read_text().strip().splitlines()) - 1)  # one row per epoch
    return {**metrics, "train_seconds": seconds, "epochs": trained, "best_epoch": int(metrics.get("epoch") or 0),
            "run": str(run)}


def _regularized_means(metrics: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Averages over the regularised attributes only (the issue's targets are stated that way)."""
    per = metrics.get("per_attribute") or {}
    out = {}
    for key in ("interpretability", "mig", "sap", "scc"):
        values = [per[n][key] for n in names if n in per and per[n].get(key) is not None]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _test_attributes(run: Path) -> tuple[np.ndarray, list[str]]:
    """The regularised attributes of the run's test subjects ``[N, A]`` and their names (no model loaded)."""
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.runs import load_run_config
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
                  loss_of: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor], seed: int = 0):
    """A supervised MONAI resnet18 (3D, 1 channel, ``outputs`` outputs) trained on the config's
    training split for ``budget_min`` minutes; returns ``(model in eval mode, test dataset, epochs)``."""
    from monai.networks.nets import resnet18

    from medlatent.config import load_config
    from medlatent.engine import make_loader, seed_everything
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    cfg = load_config(config)
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


def _resnet_auc(config: Path, budget_min: float, seed: int = 0) -> dict[str, Any]:
    """Test AUC of a supervised MONAI resnet18 (one logit) on the config's split and budget."""
    from sklearn.metrics import roc_auc_score

    from medlatent.engine import make_loader

    def bce(out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], batch["label"].float().view(-1))

    model, test_set, epochs = _train_resnet(config, budget_min, 1, bce, seed)
    probs, labels = [], []
    with torch.no_grad():
        for batch in make_loader(test_set, 8, 0):
            probs.append(torch.sigmoid(model(batch["image"].as_tensor().float())[:, 0]).numpy())
            labels.append(batch["label"].view(-1).numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return {"auc": float(roc_auc_score(labels, probs)), "accuracy": float(((probs > 0.5) == labels).mean()),
            "epochs": epochs}


def _resnet_attributes(config: Path, budget_min: float, seed: int = 0) -> dict[str, Any]:
    """How well a supervised MONAI resnet18 reads the regularised attributes from these scans: it
    regresses them (min-max scaled on the training split, MSE) for the same budget; test Spearman
    per attribute. A reference for the AR-tied dims, which see the attributes only through their order."""
    from scipy.stats import spearmanr

    from medlatent.config import load_config
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
    from medlatent.attrivae.family import load_run
    from medlatent.attrivae.task import plain
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    state = load_run(run)
    dim = state.attributes.dim_of(VENTRICLE_ATTRIBUTE)
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


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=20.0, help="training minutes per model (default 20)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "attrivae_metrics.json")
    parser.add_argument("--datasets", nargs="+", default=["ixi", "adrenal"], choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_attrivae", help="runs are kept here")
    args = parser.parse_args(argv)

    from medlatent.config import load_config

    results: dict[str, Any] = {"budget_min": args.budget_min, "datasets": {}}
    rows = []
    for name in args.datasets:
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
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    from medlatent.attrivae.family import _finite

    write_text_atomic(args.json, json.dumps(_finite(results), indent=2, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
