"""Attention faithfulness benchmark: every attention method x layer x evidence against ground-truth structures.

For each dataset (phantoms from configs/attrivae_demo.yaml, EMIDEC from configs/attrivae_emidec.yaml,
IXI from configs/attrivae_ixi.yaml) it trains the Attri-VAE (or takes a run given with
``--<dataset>-run``; runs trained under ``--out`` are reused), then on the test subjects scores
the class map and each regularised attribute's map against its structure:

- phantoms: class -> lesion (mask 3), ``cavity_volume_mm3`` -> cavity and wall (1, 2, 3),
  ``wall_thickness_mm`` -> wall (1, 3); the body is the field of view;
- EMIDEC: class -> infarct (labels 3 + 4), a cavity attribute -> cavity (1), a myocardium
  attribute -> myocardium (2 + 3 + 4), infarct volume -> infarct, wall thickness -> myocardium;
  the body is the left ventricle (labels 1-4: the config masks the images to it);
- IXI: ``lateral_ventricles_mm3`` -> lateral ventricles (DLMUSE 51, 52), ``hippocampus_mm3`` ->
  hippocampus (47, 48); the body is the brain (DLMUSE > 0).

Traversals (``traversal.<dataset>.<attribute>``: ``spearman``, ``off_target``): phantoms measured by
thresholds (each dimension over its ``mu`` on the training scans; ``judge`` holds the range and how
well the thresholds read the test scans and their reconstructions), EMIDEC and IXI by a MONAI resnet18 regressor trained on the run's training scans (its
validation and test Spearman per attribute are stored with them as ``judge``).

Figures (attrivae/faithfulness.py): ROI enrichment (median, 95% bootstrap CI), pointing game,
IoU of the map thresholded at half its peak, deletion and insertion AUC against 10 random orders
(Wilcoxon p, paired per subject), the cascading randomisation check, seconds and peak MiB per map.

Usage (repo root):
    python benchmarks/attention_faithfulness.py [--quick] [--json OUT] [--datasets phantoms emidec ixi]
        [--phantoms-run RUN] [--emidec-run RUN] [--ixi-run RUN] [--budget-min 15] [--regressor-min 4]
        [--threads 1] [--methods M ...] [--layers L ...] [--patch-mm MM ...] [--targets T ...] [--no-traversal]
        [--traversal-only] [--judge-on scans|reconstructions]
``--quick``: phantoms only, a few minutes (``QUICK``: 2-minute training, HiResCAM at two layers and
Grad-CAM, 4 random orders, 4 traversed subjects).
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

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"phantoms": ROOT / "configs" / "attrivae_demo.yaml", "emidec": ROOT / "configs" / "attrivae_emidec.yaml",
           "ixi": ROOT / "configs" / "attrivae_ixi.yaml"}
# dataset -> class structure, attribute structures ((name substring, structure name, labels)), body
GROUND_TRUTH: dict[str, dict[str, Any]] = {
    "phantoms": {"class": ("lesion", (3,)), "body": "field of view",
                 "attributes": (("cavity", "cavity and wall", (1, 2, 3)), ("wall", "wall", (1, 3)))},
    "emidec": {"class": ("infarct", (3, 4)), "body": "organ",
               "attributes": (("cavity", "cavity", (1,)), ("myocard", "myocardium", (2, 3, 4)),
                           ("infarct", "infarct", (3, 4)), ("wall", "myocardium", (2, 3, 4)))},
    "ixi": {"class": None, "body": "brain",
            "attributes": (("ventricle", "lateral ventricles", (51, 52)), ("hippocampus", "hippocampus", (47, 48)))},
}


def _candidates(model: Any, scope: str, layers: list[str] | None = None,
                patch_mm: tuple[float, ...] = (16.0,)) -> list[Any]:
    """The (method, layer, baseline, patch) settings compared: layer methods at each usable layer, input methods.

    ``scope``: ``all`` (every usable layer, three baselines), ``default`` (first, middle and default
    layer; blurred and zero baselines) or ``quick`` (HiResCAM at the default and middle layer,
    Grad-CAM at the default layer: the defaults and the cheap comparisons that chose them; the
    input methods, 20-40x slower per map, are left to the full run). ``layers``: the layer methods
    at exactly these encoder layers instead (any layer, also one coarser than ``MIN_VOXELS``);
    ``patch_mm``: the occlusion cube edges compared (mm).
    """
    from medlatent.attrivae.attention import MIN_VOXELS, MapSettings, default_layer, resolve_layer

    shapes = model.layer_shapes()
    if layers is not None:
        layers = [resolve_layer(model, name)[0] for name in layers]  # InputError naming the choices
        scope = "all" if scope == "all" else "given"
    else:
        layers = [n for n, s in shapes.items() if min(s) >= MIN_VOXELS and n != "encoder.residual"]
    if scope == "quick":
        default, middle = default_layer(model), layers[len(layers) // 2]
        return [*(MapSettings(method="hirescam", layer=layer) for layer in dict.fromkeys((default, middle))),
                MapSettings(method="gradcam", layer=default)]
    if scope == "default":
        layers = sorted({layers[0], layers[len(layers) // 2], default_layer(model)}, key=layers.index)
    out = [MapSettings(method=m, layer=layer) for m in ("hirescam", "gradcam", "guided_gradcam") for layer in layers]
    baselines = ("blurred", "zeros", "masked") if scope == "all" else ("blurred", "zeros")
    out += [MapSettings(method="integrated_gradients", baseline=b) for b in baselines]
    out += [MapSettings(method="occlusion", patch_mm=float(mm)) for mm in patch_mm]
    return out


def _train(dataset: str, out: Path, budget_min: float, quick: bool) -> Path:
    from medlatent.commands.registry import load_config
    from medlatent.commands.train import train

    run = out / (f"{dataset}_run" + ("_quick" if quick else ""))
    if (run / "checkpoints" / "best.pt").is_file() or (run / "checkpoints" / "last.pt").is_file():
        return run
    overrides = [f"train.max_minutes={budget_min}", "train.preview=false"]
    if dataset == "phantoms":
        from medlatent.transforms.phantoms import write_phantom_dataset

        # quick: 72 phantoms give 14 test subjects, 7 with a lesion: the fewest for which a paired test over
        # subjects can reach p < 0.01 (one-sided Wilcoxon, 1/2^7)
        manifest = write_phantom_dataset(out / ("phantoms_quick" if quick else "phantoms"),
                                         n_subjects=72 if quick else 80, shape=(32, 32, 32), seed=0)
        overrides.append(f"data.manifest={manifest}")
    if dataset == "emidec":
        from attrivae_metrics import _emidec_shape_table  # benchmarks/ is on sys.path when run as a script

        _emidec_shape_table(CONFIGS[dataset])  # runs/emidec/shape.csv, when missing
    return train(load_config(CONFIGS[dataset], overrides), run)


#: what ``--quick`` cuts (docs/benchmarks.md, "Attention faithfulness", has its wall time): the training
#: budget (the demo config's 40 epochs usually end first), the candidates (``_candidates``), the
#: random deletion orders (the Wilcoxon test pairs subjects, not orders) and the traversed subjects
QUICK = {"budget_min": 2.0, "random_orders": 4, "subjects": 16, "traversal_subjects": 4}


def _structure(labels: torch.Tensor, values: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(labels.round().long(), torch.tensor(values)).float()


def _targets(dataset: str, state: Any, amap: Any) -> list[tuple[str, int | None, str, tuple[int, ...]]]:
    """``(target name, dim, structure name, labels)``: the class (if scored) and each matched attribute."""
    truth = GROUND_TRUTH[dataset]
    targets = []
    if truth["class"] is not None and state.model.classifier is not None:
        targets.append(("class", None, *truth["class"]))
    for name, dim in zip(amap.regularized, amap.dims):
        for key, structure, labels in truth["attributes"]:
            if key in name.lower():
                targets.append((name, dim, structure, labels))
                break
    return targets


def _summary(per_subject: dict[str, list[float]], sanity: dict[str, Any] | None, cost: tuple[float, float],
             structure: str) -> dict[str, Any]:
    from medlatent.attrivae.faithfulness import median_ci, paired_p

    median, low, high = median_ci(per_subject["enrichment"])
    return {
        "structure": structure, "subjects": len(per_subject["enrichment"]),
        "enrichment": median, "enrichment_ci": [low, high],
        "pointing": float(np.mean(per_subject["pointing"])), "iou": float(np.nanmedian(per_subject["iou"])),
        "deletion_auc": float(np.median(per_subject["deletion_auc"])),
        "random_deletion_auc": float(np.median(per_subject["random_deletion_auc"])),
        "deletion_p": paired_p(per_subject["deletion_auc"], per_subject["random_deletion_auc"], "less"),
        "insertion_auc": float(np.median(per_subject["insertion_auc"])),
        "random_insertion_auc": float(np.median(per_subject["random_insertion_auc"])),
        "insertion_p": paired_p(per_subject["insertion_auc"], per_subject["random_insertion_auc"], "greater"),
        "sanity_pass": None if sanity is None else sanity["passed"],
        "sanity_trained_rho": None if sanity is None else sanity["trained_rho"],
        "sanity_max_random_rho": None if sanity is None else sanity["max_random_rho"],
        "seconds_per_volume": cost[0], "peak_mib_per_volume": cost[1],
    }


def score_dataset(dataset: str, run: Path, scope: str, n_random: int, steps: int, subjects: int,
                  methods: list[str] | None = None, layers: list[str] | None = None,
                  patch_mm: tuple[float, ...] = (16.0,), targets: list[str] | None = None,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The full method x layer x evidence table and the defaults' figures for one trained run.

    ``methods``, ``layers``, ``patch_mm``: the candidates (``_candidates``); ``targets``: score only the
    targets whose name contains one of these (``class`` for the class map; default all). ``progress``
    is called with ``{"run", "partial": True, "methods": rows so far}`` after each candidate (to keep
    what a long run measured if it is stopped).
    """
    from medlatent.attrivae.attention import (EVIDENCE, attention_maps, blurred, default_settings, map_cell,
                                              resolve_layer, target_score)
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.faithfulness import (deletion_insertion, enrichment, iou, measure_cost, pointing_game,
                                                 random_orders, randomization_check)
    from medlatent.attrivae.task import plain
    from medlatent.commands.attention import item_spacing
    from medlatent.commands.runs import load_run

    state = load_run(run, "attention")
    model = state.model
    amap = AttributeMap.load(state.run)
    _, test, items = _test_scans(state, subjects)
    spacing = item_spacing(items[0])
    x_all = torch.stack([plain(i["image"]).float() for i in items]).to(state.device)
    labels = torch.stack([plain(i["mask"]).float() for i in items])
    # the brain (IXI) or the left ventricle (EMIDEC, whose images are masked to it); the phantoms' field of view
    body_all = torch.ones_like(labels) if GROUND_TRUTH[dataset]["body"] == "field of view" else (labels > 0).float()
    positive = [int(r.get("label", 0) or 0) == 1 for r in test]
    candidates = [c for c in _candidates(model, scope, layers, patch_mm) if methods is None or c.method in methods]
    if methods is not None:  # in the order given (a long run that is stopped keeps the first ones: --json)
        candidates.sort(key=lambda c: methods.index(c.method))
    rows, defaults = [], {"class": None, "attributes": {}}
    for target, dim, structure_name, structure_labels in _targets(dataset, state, amap):
        if targets is not None and not any(key.lower() in target.lower() for key in targets):
            continue
        structure_all = _structure(labels, structure_labels)
        keep = [i for i in range(len(items)) if structure_all[i].sum() > 0 and (dim is not None or positive[i])]
        x, structure, body = x_all[keep], structure_all[keep], body_all[keep]
        fill = blurred(x)
        random_cache: dict[tuple[int, str], dict[str, float]] = {}
        n_sanity = min(len(keep), 4 if scope == "all" else 2)
        print(f"[{dataset}] {target}: {len(keep)} test subjects, structure {structure_name} {structure_labels}",
              flush=True)
        for settings in candidates:
            layer = resolve_layer(model, settings.layer)[0] if settings.uses_layer else "input"
            started = time.perf_counter()
            maps, seconds, peak = measure_cost(lambda: attention_maps(model, x[:1], dim, settings, spacing=spacing))
            passes = 2 if settings.method == "guided_gradcam" else 1
            rest = attention_maps(model, x[1:], dim, settings, spacing=spacing) if len(keep) > 1 else None
            maps = {e: torch.cat([maps[e], rest[e]]) if rest is not None else maps[e] for e in EVIDENCE}
            few = 1 if settings.method == "occlusion" else n_sanity
            sanity = randomization_check(lambda m, v: attention_maps(m, v, dim, settings, spacing=spacing), model,
                                         x[:few], classifier=dim is None)
            cell = map_cell(model, settings, spacing)
            for evidence in EVIDENCE:
                cams = maps[evidence].cpu()
                per = {"enrichment": enrichment(cams, structure, body).tolist(),
                       "pointing": pointing_game(cams, structure, cell).tolist(),
                       "iou": iou(cams, structure).tolist()}
                sign = "negative" if evidence == "negative" else "positive"
                for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
                    per[key] = []
                for i in range(len(keep)):
                    volume = x[i:i + 1]
                    score = target_score(model, volume, dim, evidence)
                    if (i, sign) not in random_cache:
                        random_cache[(i, sign)] = random_orders(score, volume, fill[i:i + 1], steps, n_random)
                    result = deletion_insertion(score, volume, maps[evidence][i:i + 1], fill[i:i + 1], steps,
                                                random_aucs=random_cache[(i, sign)])
                    for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
                        per[key].append(result[key])
                row = {"target": target, "method": settings.method, "layer": layer, "evidence": evidence,
                       "baseline": settings.baseline if not settings.uses_layer else None,
                       "patch_mm": settings.patch_mm if settings.method == "occlusion" else None,
                       **_summary(per, sanity[evidence], (seconds / passes, peak), structure_name)}
                rows.append(row)
            what = f"{settings.patch_mm:g} mm" if settings.method == "occlusion" else layer
            print(f"  {settings.method:21s} {what:17s} {time.perf_counter() - started:6.1f} s "
                  f"(enrichment +/-/abs: {', '.join(_fmt(r['enrichment']) for r in rows[-3:])})", flush=True)
            if progress is not None:
                progress({"run": str(run), "partial": True, "methods": rows})
        for kind_settings in default_settings("class" if dim is None else "attribute"):
            layer = resolve_layer(model, kind_settings.layer)[0] if kind_settings.uses_layer else "input"
            match = next((r for r in rows if r["target"] == target and r["method"] == kind_settings.method
                         and r["layer"] == layer and r["evidence"] == kind_settings.evidence
                         and r["baseline"] in (None, kind_settings.baseline)), None)
            if match is None:  # the default was not among the candidates scored (--methods, --layers)
                continue
            if dim is None:
                defaults["class"] = match
            else:
                defaults["attributes"].setdefault(target, {"maps": []})["maps"].append(match)
    for target, entry in defaults["attributes"].items():
        # an attribute exports two maps (both evidences): its figure is the one on its structure
        best = max(entry["maps"], key=lambda r: -np.inf if r["enrichment"] != r["enrichment"] else r["enrichment"])
        defaults["attributes"][target] = {**best, "maps": entry["maps"]}
    shown = run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run.resolve()
    return {"run": str(shown), "test_subjects": len(items), "spacing_mm": list(spacing), "default": defaults,
            "methods": rows, "eligible": eligible(rows)}


#: a map may be a default only if it passes the randomisation check and its deletion beats random at this p
ELIGIBLE_P = 0.01


def eligible(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """Per target, the scored map of highest enrichment among those that may be defaults (issue 15: a map
    that fails the randomisation check is not offered; its deletion must beat random, p < ``ELIGIBLE_P``);
    None where no map qualifies. What the defaults are compared with (docs/attention.md)."""
    out: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        out.setdefault(row["target"], None)
        if not (row["sanity_pass"] and row["deletion_p"] < ELIGIBLE_P and np.isfinite(row["enrichment"])):
            continue
        best = out[row["target"]]
        if best is None or row["enrichment"] > best["enrichment"]:
            out[row["target"]] = row
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(dataset: str, result: dict[str, Any]) -> str:
    """Markdown tables, one per target: method x layer x evidence."""
    lines = [f"### {dataset} ({result['test_subjects']} test subjects, run {result['run']})"]
    targets = dict.fromkeys(r["target"] for r in result["methods"])
    for target in targets:
        rows = [r for r in result["methods"] if r["target"] == target]
        lines += ["", f"{target} -> {rows[0]['structure']} ({rows[0]['subjects']} subjects)", "",
                  "| method | layer | evidence | enrichment (95% CI) | pointing | IoU | deletion AUC vs random (p) "
                  "| insertion AUC vs random (p) | sanity (rho trained / random) | s per map | MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            detail = ", ".join(filter(None, (r["baseline"], f"{r['patch_mm']:g} mm" if r.get("patch_mm") else None)))
            method = r["method"] + (f" ({detail})" if detail else "")
            lines.append(
                f"| {method} | {r['layer']} | {r['evidence']} | {_fmt(r['enrichment'])} ({_fmt(r['enrichment_ci'][0])}-"
                f"{_fmt(r['enrichment_ci'][1])}) | {_fmt(r['pointing'])} | {_fmt(r['iou'])} | "
                f"{_fmt(r['deletion_auc'])} vs {_fmt(r['random_deletion_auc'])} ({_fmt(r['deletion_p'], 3)}) | "
                f"{_fmt(r['insertion_auc'])} vs {_fmt(r['random_insertion_auc'])} ({_fmt(r['insertion_p'], 3)}) | "
                f"{_fmt(r['sanity_pass'])} ({_fmt(r['sanity_trained_rho'])} / {_fmt(r['sanity_max_random_rho'])}) | "
                f"{_fmt(r['seconds_per_volume'], 3)} | {_fmt(r['peak_mib_per_volume'], 0)} |")
    for target, row in result.get("eligible", {}).items():
        lines.append(f"\n{target}: eligible for a default (passes the check, deletion p < {ELIGIBLE_P}): " + (
            "none" if row is None else f"{row['method']} {row.get('patch_mm') or row['layer']} {row['evidence']}, "
            f"enrichment {_fmt(row['enrichment'])}"))
    return "\n".join(lines)


def _test_scans(state: Any, subjects: int, split: str = "test"
                ) -> tuple[dict[str, list], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(records by split, the first test records, their items preprocessed as in evaluation)``;
    ``split="train"`` with ``subjects=0``: every training record instead."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    records, _ = load_split_records(state.cfg["data"])
    test = records[split][:subjects] if subjects else records[split]
    data = make_dataset(test, {**state.cfg["data"], "cache": "none", "augment": []}, train=False)
    return records, test, [data[i] for i in range(len(data))]


def _spearman_by_name(truth: dict[str, list[float]], read: dict[str, Any]) -> dict[str, float]:
    """Per attribute, the Spearman of a measurement ``read`` with the ground truth (0 where undefined)."""
    from scipy.stats import spearmanr

    return {name: float(np.nan_to_num(spearmanr(truth[name], read[name])[0])) for name in truth}


def _traversal(dataset: str, run: Path, subjects: int, regressor_min: float, judge_on: str = "scans") -> dict[str, Any]:
    """Decoded traversals measured independently (``attrivae.traversal.measure_traversal``).

    Phantoms: each decoded step is thresholded and measured (``traversal.phantom_measure``).
    EMIDEC and IXI: a MONAI resnet18 regressor (``attrivae.attribute_regressor``) is trained for
    ``regressor_min`` minutes on the run's training split, preprocessed as the run saw it, and reads
    the regularised attributes off each decoded step; its Spearman on the validation split, on
    the test scans and on their reconstructions ``decode(mu)`` (what it reads in a traversal) is
    stored with each attribute's figures as ``judge``. ``judge_on="reconstructions"`` trains it
    on the run's reconstructions of the training scans instead of the scans, so decoded steps are
    in its training distribution.
    """
    from medlatent.attrivae.attribute_regressor import train_attribute_regressor
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.task import plain
    from medlatent.attrivae.traversal import (intracranial_measure, measure_reconstructions, measure_traversal,
                                              phantom_measure, reconstruct)
    from medlatent.commands.attention import item_spacing
    from medlatent.commands.runs import load_run

    state = load_run(run, "traverse")
    amap = AttributeMap.load(state.run)
    records, test, items = _test_scans(state, subjects)
    x = torch.stack([plain(i["image"]).float() for i in items])
    columns = list(state.cfg["data"]["attributes"])  # the order of record["attrs"]
    sd = {name: float(np.std([float(r["attrs"][columns.index(name)]) for r in records["train"]]))
          for name in amap.regularized}
    if dataset == "phantoms":
        # can the thresholds read this model's decoded volumes? Spearman with the ground truth on the test
        # scans themselves and on their reconstructions decode(mu): a decoder that loses the wall / blood
        # pool contrast fails the second, and then no traversal it decodes can be measured
        measure = phantom_measure(item_spacing(items[0]))
        _, every, scans = _test_scans(state, len(records["test"]))  # all test scans: thresholds are cheap
        x_every = torch.stack([plain(i["image"]).float() for i in scans])
        truth = {name: [float(r["attrs"][columns.index(name)]) for r in every] for name in amap.regularized}
        judge = {"kind": "thresholds (measure_phantom)", "subjects": len(every)}
        judge["test_spearman"] = _spearman_by_name(truth, measure(x_every))
        judge["recon_spearman"] = _spearman_by_name(truth, measure_reconstructions(state.model, x_every, measure))
        print(f"[{dataset}] thresholds vs ground truth, Spearman on test scans / their reconstructions: "
              + ", ".join(f"{n} {judge['test_spearman'][n]:.2f} / {judge['recon_spearman'][n]:.2f}" for n in truth),
              flush=True)
    else:  # the regressor's own copy of the data: never the run's (possibly shared) disk cache
        started = time.perf_counter()
        view = (lambda batch: reconstruct(state.model, batch)) if judge_on == "reconstructions" else None
        regressor, judge = train_attribute_regressor(records, {**state.cfg["data"], "cache": "memory"}, columns,
                                                     amap.regularized, minutes=regressor_min, device=state.device,
                                                     view=view)
        truth = {name: [float(r["attrs"][columns.index(name)]) for r in test] for name in amap.regularized}
        x_recon = reconstruct(state.model, x)  # decode(mu) of the traversed subjects, read by every judge below
        judge["test_spearman"] = _spearman_by_name(truth, regressor.predict(x))
        judge["recon_spearman"] = _spearman_by_name(truth, regressor.predict(x_recon))
        judge = {"kind": "MONAI resnet18 regressor", "trained_on": judge_on, **judge,
                 "seconds": time.perf_counter() - started}
        print(f"[{dataset}] regressor on {judge_on}: {judge['epochs']} epochs in {judge['seconds']:.0f} s; Spearman "
              "val / test scans / their reconstructions: "
              + ", ".join(f"{n} {judge['val_spearman'].get(n, math.nan):.2f} / {judge['test_spearman'][n]:.2f} / "
                          f"{judge['recon_spearman'][n]:.2f}" for n in amap.regularized), flush=True)
        measure = regressor.predict
    span: Any = (-3.0, 3.0)
    if dataset == "phantoms":
        # each dim over its mu_k on the training scans: the AR loss puts mu_k where it orders the subjects, not
        # around 0 (docs/benchmarks.md: mu_0 in 0.2..3.4), and past that range the decoder extrapolates
        _, _, seen = _test_scans(state, 0, split="train")
        with torch.no_grad():
            mu = state.model.eval().encode(torch.stack([plain(i["image"]).float() for i in seen]))[0]
        span = {name: (float(mu[:, amap.dim_of(name)].min()), float(mu[:, amap.dim_of(name)].max()))
                for name in amap.regularized}
        judge = {**judge, "z_range": span}
    result = measure_traversal(state.model, x, amap, measure, sd, value_range=span)
    out = {name: {**figures, "judge": judge} for name, figures in result.items()}
    if dataset != "phantoms" and state.cfg["data"].get("mask_image") and "icv_mm3" in amap.regularized:
        # skull-stripped scans: the intracranial volume can be read without the regressor; the same
        # traversals again, with ICV measured directly and the other attributes by the regressor
        direct = intracranial_measure(item_spacing(items[0]))
        icv = {"icv_mm3": truth["icv_mm3"]}
        check = {"test_spearman": _spearman_by_name(icv, direct(x))["icv_mm3"],
                 "recon_spearman": _spearman_by_name(icv, direct(x_recon))["icv_mm3"]}

        def mixed(volumes: torch.Tensor) -> dict[str, np.ndarray]:
            return {**regressor.predict(volumes), **direct(volumes)}

        again = measure_traversal(state.model, x, amap, mixed, sd)
        print(f"[{dataset}] ICV read directly (Spearman with icv_mm3 on test scans / reconstructions "
              f"{check['test_spearman']:.2f} / {check['recon_spearman']:.2f}): " + ", ".join(
                  f"{k}: ICV change {v['change_sd']['icv_mm3']:.2f} SD, off-target {v['off_target']:.2f}"
                  for k, v in again.items()), flush=True)
        for name, figures in again.items():
            out[name]["icv_direct"] = {"judge": {"kind": "intracranial volume of the skull-stripped volume "
                                                         "(transforms.brain)", **check}, **figures}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="phantoms only, a few minutes: 2-minute training, 3 maps, 4 random orders")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--datasets", nargs="+", choices=sorted(CONFIGS), default=["phantoms", "emidec", "ixi"])
    for name in CONFIGS:
        parser.add_argument(f"--{name}-run", type=Path, help=f"a trained {name} Attri-VAE run to score instead")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_attention", help="runs are kept here")
    parser.add_argument("--budget-min", type=float, default=15.0, help="training minutes per run (default 15)")
    parser.add_argument("--random-orders", type=int, help="random deletion orders (default 10, --quick 4)")
    parser.add_argument("--steps", type=int, default=16, help="points of a deletion curve minus one (default 16)")
    parser.add_argument("--subjects", type=int, help="test subjects scored (default 40; --quick: all 14)")
    parser.add_argument("--methods", nargs="+", help="score only these methods, in this order (default all)")
    parser.add_argument("--layers", nargs="+",
                        help="layer methods at exactly these encoder layers (default: see --all-candidates)")
    parser.add_argument("--patch-mm", nargs="+", type=float, default=[16.0],
                        help="occlusion cube edges in mm to compare (default 16)")
    parser.add_argument("--targets", nargs="+",
                        help="score only targets whose name contains one of these ('class': the class map)")
    parser.add_argument("--no-traversal", action="store_true", help="skip the traversal measurement")
    parser.add_argument("--traversal-only", action="store_true", help="measure the traversals, not the maps")
    parser.add_argument("--all-candidates", action="store_true",
                        help="every usable layer and all three baselines (default: 3 layers, 2 baselines)")
    parser.add_argument("--regressor-min", type=float, default=4.0,
                        help="training minutes of the EMIDEC / IXI traversal regressor (default 4)")
    parser.add_argument("--judge-on", choices=("scans", "reconstructions"), default="scans",
                        help="train the EMIDEC / IXI regressor on the scans or on the run's reconstructions of them")
    parser.add_argument("--threads", type=int, help="torch threads (on a shared CPU 1 is faster)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = ["phantoms"] if args.quick else args.datasets
    results: dict[str, Any] = {"quick": args.quick, "cpu": _cpu(), "threads": torch.get_num_threads(), "traversal": {}}
    for dataset in datasets:
        given = getattr(args, f"{dataset}_run")
        if given is None and not CONFIGS[dataset].is_file():
            print(f"[{dataset}] skipped: {CONFIGS[dataset]} not found", flush=True)
            continue
        run = given or _train(dataset, args.out, min(args.budget_min, QUICK["budget_min"]) if args.quick
                              else args.budget_min, args.quick)
        scope = "quick" if args.quick else "all" if args.all_candidates else "default"
        if args.traversal_only:
            results[dataset] = {"run": str(run)}
        else:
            def keep(partial: dict[str, Any], dataset: str = dataset) -> None:
                if args.json:
                    results[dataset] = partial
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(results, indent=1) + "\n")

            results[dataset] = score_dataset(dataset, run, scope, args.random_orders or (QUICK["random_orders"] if
                                             args.quick else 10), args.steps, args.subjects or (QUICK["subjects"]
                                             if args.quick else 40), args.methods, args.layers,
                                             tuple(args.patch_mm), args.targets, keep)
            print(table(dataset, results[dataset]), flush=True)
        if args.json:  # written after each step, so an interrupted run keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        if args.no_traversal:
            continue
        traversal = _traversal(dataset, run, min(args.subjects or 20, QUICK["traversal_subjects"] if args.quick
                                                 else 20), args.regressor_min, args.judge_on)
        results["traversal"][dataset] = traversal
        print(f"[{dataset}] traversals: " + ", ".join(f"{k}: Spearman {v['spearman']:.2f}, off-target "
                                                      f"{v['off_target']:.2f} (own change "
                                                      f"{v['change_sd'].get(k, math.nan):.2f} SD)"
                                                      for k, v in traversal.items()))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
