"""The Attri-VAE family for the ``medlatent`` CLI: defaults, the training task, and every run-based command.

File paths, run directories and CLI concerns live here; the math lives in ``model``,
``losses``/``ar_loss``, ``disentanglement``, ``traversal`` and ``attention``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from scipy.stats import spearmanr

from medlatent.attrivae.attention import EVIDENCE, METHODS, grad_cam, resolve_layer
from medlatent.attrivae.attributes import AttributeMap, check_attributes_present, fit_attribute_map
from medlatent.attrivae.model import AttriVAE
from medlatent.attrivae.task import AttriVAETask, plain
from medlatent.attrivae.traversal import decode_latents, fit_calibration, interpolate_latents, traverse_latents
from medlatent import distributed as dist_utils
from medlatent.errors import InputError
from medlatent.io import child_path, write_text_atomic
from medlatent.nifti import write_nifti
from medlatent.runs import checkpoint_path, load_checkpoint, load_run_config, read_json, write_json

__all__ = ["DEFAULTS", "build_task", "build_model", "load_model", "load_run", "LoadedRun", "cmd_evaluate",
           "cmd_reconstruct", "cmd_encode", "encode_features", "cmd_traverse", "cmd_interpolate", "cmd_attention",
           "run_demo", "COMMANDS"]

DEFAULTS: dict[str, Any] = {
    "net": {
        "space_to_depth": 1,            # lossless fold of f^3 voxels into channels first (2: ~6x faster on CPU)
        "channels": [16, 32, 64, 64],   # one stride-2 level each: 64x64x48 -> 4x4x3
        "decoder_final_channels": None,  # width of the decoder's last level (default channels[0])
        "bottleneck_channels": 16,      # conv channels before flattening to mu / logvar
        "latent_dim": 64,
        "num_res_units": 1,
        "norm": "batch",
        "classifier_hidden": [32, 16],  # paper: latent -> 32 -> 16 -> classes
        "output": "sigmoid",            # volumes are scaled to [0, 1] by data.intensity: percentile
        # what the classifier reads in training: mu, as at inference, so that its batch-norm
        # statistics match; z (the paper) leaves them fitted to noisier inputs (docs/attrivae.md)
        "classifier_input": "mu",
        "attention_layer": None,        # attention map layer; None = last encoder layer with >= 4 voxels per axis
        "attention_method": "hirescam",  # hirescam (faithful after the encoder's flatten + linear) or gradcam
    },
    "loss": {
        "beta": 2.0,          # KL weight
        "gamma": 200.0,       # AR weight (0 = unregularised baseline)
        "delta": 10.0,        # AR tanh steepness
        "alpha": 1.0,         # classification weight
        "regularized": None,  # attributes tied to latent dims 0, 1, ...; None = all of data.attributes
    },
    # the objective itself: every term is comparable across epochs, unlike the split-level metrics
    "train": {"best_metric": "val_loss", "best_mode": "min"},
}

#: the commands this family implements (listed in errors about the other family's runs)
COMMANDS = ("evaluate", "reconstruct", "encode", "traverse", "interpolate", "attention")


# --- building --------------------------------------------------------------------------

def _num_outputs(attributes: AttributeMap) -> int:
    classes = attributes.classes
    if not classes:
        return 0
    if len(classes) < 2:
        raise InputError(f"config key 'data.label': '{attributes.label}' has a single class {classes}; "
                         "a classifier needs at least two")
    return 1 if len(classes) == 2 else len(classes)


def build_model(cfg: Mapping[str, Any], attributes: AttributeMap) -> AttriVAE:
    """The network described by ``cfg['net']`` for ``cfg['data']['spatial_size']`` volumes."""
    net = cfg["net"]
    try:
        return AttriVAE(cfg["data"]["spatial_size"], channels=net["channels"], latent_dim=int(net["latent_dim"]),
                        bottleneck_channels=int(net["bottleneck_channels"]), num_res_units=int(net["num_res_units"]),
                        norm=net["norm"], num_outputs=_num_outputs(attributes),
                        classifier_hidden=net["classifier_hidden"], output=net["output"],
                        classifier_input=net["classifier_input"], space_to_depth=int(net["space_to_depth"]),
                        decoder_final_channels=net["decoder_final_channels"])
    except ValueError as err:
        raise InputError(f"config keys 'net' / 'data.spatial_size': {err}") from None


def build_task(cfg: dict[str, Any], info: Any, run_dir: str | Path, records: Mapping[str, Sequence[Mapping]]) -> AttriVAETask:
    """Fit the attribute scaler on the training split, save it with the attribute -> dim map, build the task.

    Args:
        cfg: resolved config.
        info: the data layer's ``DataInfo`` (``classes``, ``attributes``, ``label``).
        run_dir: the run; ``attributes.json`` is written there by rank 0.
        records: split -> records, each with ``"attrs"`` raw values in ``info.attributes`` order.
    """
    loss = cfg["loss"]
    amap = fit_attribute_map(records, info.attributes, loss.get("regularized"), int(cfg["net"]["latent_dim"]),
                             label=getattr(info, "label", None), classes=info.classes, gamma=float(loss["gamma"]))
    check_attributes_present(records, amap.names, amap.columns)
    if dist_utils.is_main():
        amap.save(run_dir)
    return AttriVAETask(build_model(cfg, amap), amap, loss)


# --- loading a run ---------------------------------------------------------------------

@dataclasses.dataclass
class LoadedRun:
    """A trained run ready for inference: model (eval mode, on its device), config, attribute map."""

    run: Path
    model: AttriVAE
    cfg: dict[str, Any]
    attributes: AttributeMap
    checkpoint: str
    epoch: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _attrivae_config(run: str | Path) -> dict[str, Any]:
    """The run's resolved config; InputError when it is not an Attri-VAE run (before resolving it)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{run}: not a run directory (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if model != "attrivae":
        raise InputError(f"{run} is a {model} run, not an attrivae run; attrivae commands: {', '.join(COMMANDS)}")
    return load_run_config(run)


def load_run(run: str | Path, which: str = "best") -> LoadedRun:
    """Rebuild a run's model from ``config.yaml`` + ``attributes.json`` and load ``checkpoints/{which}.pt``."""
    run = Path(run)
    cfg = _attrivae_config(run)
    amap = AttributeMap.load(run)
    model = build_model(cfg, amap)
    path = checkpoint_path(run, which)
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise InputError(f"{path}: does not match the network in {run / 'config.yaml'}: {err}") from None
    model.to(dist_utils.pick_device()).eval()
    return LoadedRun(run, model, cfg, amap, path.stem, int(state.get("epoch", 0)))


def load_model(run: str | Path, which: str = "best") -> AttriVAE:
    """The trained ``AttriVAE`` of a run, in eval mode (``which``: best, falling back to last)."""
    return load_run(run, which).model


# --- inputs ----------------------------------------------------------------------------

def _load_input(path: str | Path, cfg: Mapping[str, Any], mask: str | Path | None = None) -> dict[str, Any]:
    from medlatent.transforms.pipeline import load_volume

    return load_volume(path, cfg["data"], mask=mask)


def _batch(item: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    return plain(item["image"]).float()[None].to(device)  # [1, 1, D, H, W]


@torch.no_grad()
def _encode(state: LoadedRun, item: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = state.model.encode(_batch(item, state.device))
    return mu[0].cpu(), logvar[0].cpu()


def _iter_manifest(manifest: str | Path, data_cfg: Mapping[str, Any]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """``(subject, source, preprocessed item)`` for each scan of a manifest CSV or MedMNIST ``.npz``, one at a time."""
    from medlatent.transforms.pipeline import iter_manifest_volumes, preprocessing
    from medlatent.transforms.records import load_split_records

    manifest = Path(manifest)
    if manifest.suffix.lower() == ".npz":
        cfg = {**copy.deepcopy(dict(data_cfg)), "manifest": str(manifest), "attributes": [], "label": None}
        records, _ = load_split_records(cfg)
        pre = preprocessing(data_cfg, keys=("image",))
        for split in ("train", "val", "test"):
            for record in records.get(split, []):
                yield record["subject"], record["image"], pre({"image": record["image"], "subject": record["subject"]})
        return
    for row, item in iter_manifest_volumes(manifest, data_cfg):
        yield str(row["subject"]), row["image"], item


def _to_input(volume: torch.Tensor, item: Mapping[str, Any], cfg: Mapping[str, Any], mode: str = "bilinear"):
    """A model-space ``[1, D, H, W]`` volume on the input file's grid and affine."""
    from medlatent.transforms.pipeline import to_input_geometry

    return to_input_geometry(volume.detach().cpu().float(), item, cfg["data"], mode=mode)


# --- evaluate --------------------------------------------------------------------------

def cmd_evaluate(run: str | Path, split: str = "test", prior: bool = False) -> dict[str, Any]:
    """``medlatent evaluate``: metrics of a split -> ``RUN/eval/metrics.json`` and ``per_subject.csv``.

    Keys: ``mse``, ``ssim`` (means over volumes), ``accuracy``, ``auc`` (from the predicted
    probabilities over the whole split), ``interpretability``, ``mig``, ``sap``, ``scc``,
    ``modularity`` (AR-VAE definitions on ``mu``), ``per_attribute: {name: {...}}`` and
    ``tied_spearman: {name: rho}`` (each regularised attribute against its own latent dim).
    """
    from medlatent.engine import make_loader, run_evaluation
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    run = Path(run)
    if prior:
        raise InputError(f"{run}: --prior: attrivae runs have no prior (that is a vqvae3d feature)")
    state = load_run(run)
    records, _ = load_split_records(state.cfg["data"])
    if not records.get(split):
        raise InputError(f"{run}: split '{split}' is empty (sizes: { {k: len(v) for k, v in records.items()} })")
    check_attributes_present({split: records[split]}, state.attributes.names, state.attributes.columns)
    task = AttriVAETask(state.model, state.attributes, state.cfg["loss"], detailed=True)
    dataset = make_dataset(records[split], state.cfg["data"], train=False, cache_dir=None)
    loader = make_loader(dataset, int(state.cfg["train"]["batch_size"]), int(state.cfg["train"]["num_workers"]))
    means, rows = run_evaluation(task, state.model, loader, state.device, progress=f"evaluate {split}")
    metrics: dict[str, Any] = {"split": split, "checkpoint": state.checkpoint, "epoch": state.epoch, "n": len(rows)}
    for key in ("mse", "ssim", "psnr", "mae", "loss", "recon", "kl", "ar", "cls"):
        metrics[key] = means.get(key, float("nan"))
    for key in ("accuracy", "auc", "interpretability", "mig", "sap", "scc", "modularity"):
        metrics[key] = task.report.get(key, float("nan"))
    metrics["per_attribute"] = task.report.get("per_attribute", {})
    metrics["regularized"] = {n: d for n, d in zip(state.attributes.regularized, state.attributes.dims)}
    # the per-attribute figures use the dim the MI estimate picks, which on a few dozen subjects
    # may not be the tied one; this says how well each tied dim itself orders its attribute
    table = pd.DataFrame(rows)
    metrics["tied_spearman"] = {
        name: float(spearmanr(table[name], table[f"z_{name}"])[0]) if len(table) > 2 else float("nan")
        for name in state.attributes.regularized}
    write_json(run / "eval" / "metrics.json", _finite(metrics))
    write_text_atomic(run / "eval" / "per_subject.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"{run}: {split} mse {metrics['mse']:.4g} ssim {metrics['ssim']:.3f} accuracy {metrics['accuracy']:.3f} "
          f"auc {metrics['auc']:.3f} | interpretability {metrics['interpretability']:.3f} mig {metrics['mig']:.3f} "
          f"sap {metrics['sap']:.3f} scc {metrics['scc']:.3f} modularity {metrics['modularity']:.3f} "
          f"-> {run / 'eval'}")
    return metrics


def _finite(value: Any) -> Any:
    """NaN -> None so metrics.json stays valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- reconstruct / encode --------------------------------------------------------------

def cmd_reconstruct(run: str | Path, input: str | Path, output: str | Path,  # noqa: A002 - CLI name
                    mask: str | Path | None = None) -> Path:
    """``medlatent reconstruct``: decode ``mu`` of one scan, written in the input's geometry.

    ``mask``: the scan's mask, needed when the run was trained with ``data.mask_image``.
    """
    state = load_run(run)
    item = _load_input(input, state.cfg, mask)
    mu, _ = _encode(state, item)
    recon = decode_latents(state.model, mu[None])[0]  # [1, D, H, W]
    write_nifti(_to_input(recon, item, state.cfg), output)
    print(f"wrote {output}")
    return Path(output)


def _encode_manifest(state: LoadedRun, manifest: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    for subject, _, item in _iter_manifest(manifest, state.cfg["data"]):
        mu, _ = _encode(state, item)
        yield subject, mu.numpy()


def encode_features(run: str | Path, manifest: str | Path) -> pd.DataFrame:
    """One row per scan of ``manifest``: ``subject`` then ``mu_0 .. mu_{L-1}`` (the encoder mean).

    The regularised attributes sit on the dims named in ``RUN/attributes.json``.
    """
    state = load_run(run)
    rows = [{"subject": s, **{f"mu_{k}": float(v) for k, v in enumerate(mu)}} for s, mu in _encode_manifest(state, manifest)]
    return pd.DataFrame(rows)


def cmd_encode(run: str | Path, manifest: str | Path, out: str | Path, codes_dir: str | Path | None = None) -> Path:
    """``medlatent encode``: ``mu`` per subject -> CSV; with ``codes_dir`` also ``<subject>.npy`` (``[L]`` float32)."""
    state = load_run(run)
    rows = []
    for subject, mu in _encode_manifest(state, manifest):
        rows.append({"subject": subject, **{f"mu_{k}": float(v) for k, v in enumerate(mu)}})
        if codes_dir is not None:
            path = child_path(codes_dir, subject, ".npy")
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, mu.astype(np.float32))
    write_text_atomic(out, pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote {out}: {len(rows)} subjects x {state.attributes.latent_dim} latent dims")
    return Path(out)


# --- traverse / interpolate ------------------------------------------------------------

def _calibration(state: LoadedRun) -> dict[str, dict[str, float]]:
    """Per regularised attribute, the linear map ``z_k -> attribute`` on the training split.

    Computed once per checkpoint (encoding the training split) and cached in
    ``RUN/eval/calibration.json``; ``{}`` when the training data cannot be read any more.
    """
    from medlatent.engine import make_loader
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    cache = state.run / "eval" / "calibration.json"
    key = {"checkpoint": state.checkpoint, "epoch": state.epoch}
    if cache.is_file():
        saved = read_json(cache)
        if saved.get("key") == key:
            return saved["attributes"]
    try:
        records, _ = load_split_records(state.cfg["data"])
    except InputError as err:
        print(f"note: traversal steps are labelled in latent units only ({err})")
        return {}
    data_cfg = {**state.cfg["data"], "cache": "none"}  # one pass: nothing to cache
    loader = make_loader(make_dataset(records["train"], data_cfg, train=False), 4, 0)
    mus, attrs = [], []
    with torch.no_grad():
        for batch in loader:
            mu, _ = state.model.encode(plain(batch["image"]).float().to(state.device))
            mus.append(mu.cpu().numpy())
            attrs.append(plain(batch["attrs"]).float().numpy())
    mu_all, attr_all = np.concatenate(mus), np.concatenate(attrs)
    amap = state.attributes
    fits = {name: fit_calibration(mu_all[:, dim], attr_all[:, column])
            for name, dim, column in zip(amap.regularized, amap.dims, amap.columns)}
    write_json(cache, _finite({"key": key, "attributes": fits}))
    return fits


def _write_steps(state: LoadedRun, item: Mapping[str, Any], volumes: torch.Tensor, titles: Sequence[str],
                 out: Path, title: str) -> list[Path]:
    """Each ``[S, 1, D, H, W]`` step as NIfTI in the input's geometry, plus one PNG grid of mid-slices."""
    from medlatent.figures import save_slice_grid

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, volume in enumerate(volumes):
        path = out / f"step_{i:02d}.nii.gz"
        write_nifti(_to_input(volume, item, state.cfg), path)
        paths.append(path)
    save_slice_grid(list(volumes), list(titles), out / "grid.png", title=title, vmin=0.0,
                    vmax=1.0 if state.cfg["net"]["output"] == "sigmoid" else None)
    return paths


def _check_steps(steps: int) -> None:
    if int(steps) < 2:
        raise InputError(f"--steps must be at least 2, got {steps}")


def cmd_traverse(run: str | Path, input: str | Path, attribute: str, steps: int = 9,  # noqa: A002
                 value_range: Sequence[float] = (-3.0, 3.0), out: str | Path = "traversal",
                 mask: str | Path | None = None) -> Path:
    """``medlatent traverse``: set the attribute's latent dim to ``steps`` values in ``value_range`` and decode.

    Writes ``OUT/step_XX.nii.gz`` (input geometry), ``OUT/grid.png`` (steps x three mid-slices,
    each row labelled with the latent value and the attribute value it corresponds to on the
    training split) and ``OUT/steps.csv``. ``mask``: as for :func:`cmd_reconstruct`.
    """
    _check_steps(steps)
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        raise InputError(f"--range: expected two different finite numbers, got {low} {high}")
    state = load_run(run)
    dim = state.attributes.dim_of(attribute)
    item = _load_input(input, state.cfg, mask)
    mu, _ = _encode(state, item)
    values = torch.linspace(low, high, int(steps))
    volumes = decode_latents(state.model, traverse_latents(mu, dim, values))
    fit = _calibration(state).get(attribute, {})
    rows, titles = [], []
    for i, value in enumerate(values.tolist()):
        estimate = fit.get("slope", float("nan")) * value + fit.get("intercept", float("nan")) if fit else float("nan")
        rows.append({"step": i, "z": value, attribute: estimate, "file": f"step_{i:02d}.nii.gz"})
        titles.append(f"z={value:+.2f}" + (f"\n{attribute}~{estimate:.4g}" if math.isfinite(estimate) else ""))
    out = Path(out)
    r2 = fit.get("r2") if fit else None
    note = f" (linear fit on train, R2 {r2:.2f})" if r2 is not None and math.isfinite(r2) else ""
    _write_steps(state, item, volumes, titles, out,
                 f"{Path(input).name}: latent dim {dim} = {attribute}{note}; subject's own z = {float(mu[dim]):+.2f}")
    write_text_atomic(out / "steps.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote {steps} steps of {attribute} (latent dim {dim}) to {out}")
    return out


def cmd_interpolate(run: str | Path, input_a: str | Path, input_b: str | Path, steps: int = 8,
                    out: str | Path = "interpolation", masks: Sequence[str | Path | None] = (None, None)) -> Path:
    """``medlatent interpolate``: decode ``steps`` points from ``mu_a`` to ``mu_b``, written in input A's geometry.

    ``masks``: the two scans' masks, needed when the run was trained with ``data.mask_image``.
    """
    _check_steps(steps)
    state = load_run(run)
    item_a, item_b = _load_input(input_a, state.cfg, masks[0]), _load_input(input_b, state.cfg, masks[1])
    mu_a, mu_b = _encode(state, item_a)[0], _encode(state, item_b)[0]
    volumes = decode_latents(state.model, interpolate_latents(mu_a, mu_b, int(steps)))
    t = np.linspace(0.0, 1.0, int(steps))
    out = Path(out)
    _write_steps(state, item_a, volumes, [f"t={v:.2f}" for v in t], out,
                 f"{Path(input_a).name} (t=0) -> {Path(input_b).name} (t=1)")
    write_text_atomic(out / "steps.csv", pd.DataFrame({"step": range(len(t)), "t": t,
                                                       "file": [f"step_{i:02d}.nii.gz" for i in range(len(t))]}).to_csv(index=False))
    print(f"wrote {steps} interpolation steps to {out}")
    return out


# --- attention -------------------------------------------------------------------------

def _ras(volume: Any) -> tuple[np.ndarray, np.ndarray]:
    """A path, array or MetaTensor ``[1, X, Y, Z]`` reoriented to RAS: ``([X, Y, Z], spacing mm [3])``."""
    from monai.transforms import Orientation

    from medlatent.transforms.pipeline import LoadVolumed

    if not hasattr(volume, "affine"):
        volume = LoadVolumed(["image"])({"image": volume})["image"]
    oriented = Orientation(axcodes="RAS", labels=tuple(zip("LPI", "RAS")))(volume)
    affine = np.asarray(oriented.affine, dtype=np.float64)
    return np.asarray(plain(oriented)[0].float().numpy()), np.linalg.norm(affine[:3, :3], axis=0)


METHOD_NAMES = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM"}


def _attention_one(state: LoadedRun, item: Mapping[str, Any], source: Any, label: str, folder: Path,
                   layer: str, dim: int | None, method: str, evidence: str = "positive") -> dict[str, Any]:
    """Attention map of one scan -> ``folder/attention_<label>.nii.gz`` (input geometry) and ``.png``; returns an index row."""
    from medlatent.figures import save_overlay

    cam = grad_cam(state.model, _batch(item, state.device), layer, dim, evidence=evidence, method=method)[0].cpu()
    if evidence != "positive":
        label = f"{label}_{evidence}"
    mapped = _to_input(cam, item, state.cfg)
    mapped = type(mapped)(torch.nan_to_num(plain(mapped).float(), nan=0.0).clamp(0.0, 1.0), meta=mapped.meta)
    nifti = folder / f"attention_{label}.nii.gz"
    write_nifti(mapped, nifti)
    array = plain(mapped)[0].numpy()
    peak = np.unravel_index(int(np.argmax(array)), array.shape)
    affine = np.asarray(mapped.affine, dtype=np.float64)
    peak_mm = affine[:3, :3] @ np.asarray(peak, dtype=np.float64) + affine[:3, 3]
    scan_ras, spacing = _ras(source)
    map_ras, _ = _ras(mapped)
    png = folder / f"attention_{label}.png"
    side = "" if evidence == "positive" else f", {evidence} evidence"
    save_overlay(scan_ras, map_ras, png, spacing=spacing, label=f"{METHOD_NAMES[method]}{side} ({label})",
                 title=f"{item.get('subject', '')}: attention for {label} at {layer}; peak at "
                       f"({peak_mm[0]:.0f}, {peak_mm[1]:.0f}, {peak_mm[2]:.0f}) mm RAS")
    row = {"subject": item.get("subject", ""), "target": label, "method": method, "evidence": evidence, "layer": layer,
           "nifti": str(nifti), "png": str(png),
           "peak_voxel": " ".join(map(str, peak)), "peak_ras_mm": " ".join(f"{v:.1f}" for v in peak_mm)}
    if state.model.classifier is not None:
        with torch.no_grad():
            mu, _ = state.model.encode(_batch(item, state.device))
            logits = state.model.classify(mu)
        probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1).amax(1)
        row["probability"] = float(probs[0])
    return row


def cmd_attention(run: str | Path, input: str | Path | None = None, manifest: str | Path | None = None,  # noqa: A002
                  attribute: str | None = None, use_class: bool = False, layer: str | None = None,
                  out: str | Path = "attention", method: str | None = None, mask: str | Path | None = None,
                  evidence: str = "positive") -> Path:
    """``medlatent attention``: attention maps as NIfTI over the original scan, plus a PNG per map.

    ``method`` is ``hirescam`` or ``gradcam`` (default: the run's ``net.attention_method``);
    ``evidence`` ``positive`` (default: where the activation raises the target) or ``negative``
    (where it lowers it; files get a ``_negative`` suffix);
    ``layer`` an encoder layer name (default: ``net.attention_layer``, else the last encoder
    layer with at least 4 voxels per axis). ``mask``: the ``INPUT``'s mask, needed when the run
    was trained with ``data.mask_image`` (a manifest gives them in its ``mask`` column).

    One ``INPUT`` -> ``OUT/attention_<target>.nii.gz`` and ``.png``. With ``manifest`` ->
    ``OUT/<subject>/...`` per scan and ``OUT/index.csv``; scans are processed one at a time,
    so memory does not grow with the number of subjects.
    """
    if (input is None) == (manifest is None):
        raise InputError("attention: give exactly one of INPUT or --manifest M")
    if (attribute is None) == (not use_class):
        raise InputError("attention: give exactly one of --attribute NAME or --class")
    state = load_run(run)
    if use_class and state.model.classifier is None:
        raise InputError(f"{run}: --class: this run was trained without data.label, so it has no classifier; "
                         f"use --attribute with one of: {', '.join(state.attributes.regularized) or 'none'}")
    dim = state.attributes.dim_of(attribute) if attribute is not None else None
    layer_name, _ = resolve_layer(state.model, layer or state.cfg["net"].get("attention_layer"))
    method = method or state.cfg["net"].get("attention_method") or "hirescam"
    if method not in METHODS:
        raise InputError(f"attention: --method must be one of {', '.join(METHODS)}, got {method!r}")
    if evidence not in EVIDENCE:
        raise InputError(f"attention: --evidence must be one of {', '.join(EVIDENCE)}, got {evidence!r}")
    label = "class" if use_class else attribute
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if input is not None:
        row = _attention_one(state, _load_input(input, state.cfg, mask), str(input), _file_label(label), out, layer_name, dim,
                             method, evidence)
        print(f"wrote {row['nifti']} and {row['png']}")
        return out
    rows = []
    for subject, source, item in _iter_manifest(manifest, state.cfg["data"]):
        item["subject"] = subject
        folder = child_path(out, subject)
        folder.mkdir(parents=True, exist_ok=True)
        rows.append({"image": source if isinstance(source, str) else "", **_attention_one(
            state, item, source, _file_label(label), folder, layer_name, dim, method, evidence)})
    write_text_atomic(out / "index.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote attention maps of {len(rows)} subjects to {out} (index: {out / 'index.csv'})")
    return out


def _file_label(label: str) -> str:
    from medlatent.io import safe_name

    return safe_name(label)


# --- demo ------------------------------------------------------------------------------

def run_demo(workdir: Path, cfg: dict[str, Any], manifest: Path) -> list[str]:
    """Train the Attri-VAE on the phantoms (``cfg`` from configs/attrivae_demo.yaml), evaluate,
    traverse one attribute and export attention maps.

    Writes under ``workdir``: ``run/`` (the run, with eval/), ``traversal/`` and ``attention/``.
    An already trained run is reused. Returns lines for the user.
    """
    from medlatent.train import train
    from medlatent.transforms.records import load_split_records

    workdir = Path(workdir)
    run = workdir / "run"
    if not (run / "checkpoints" / "last.pt").is_file():
        train(cfg, run)
    metrics = cmd_evaluate(run, "test")
    records, _ = load_split_records(cfg["data"])
    subject = next(r for r in records["test"] if r.get("label") == 1) if any(r.get("label") == 1 for r in records["test"]) \
        else records["test"][0]
    attribute = cfg["data"]["attributes"][0]
    traversal = cmd_traverse(run, subject["image"], attribute, steps=9, out=workdir / "traversal")
    attention = workdir / "attention"
    cmd_attention(run, subject["image"], attribute=None, use_class=True, out=attention)
    cmd_attention(run, subject["image"], attribute=attribute, out=attention)
    return [
        f"Attri-VAE run: {run} (curves in {run / 'figures'}; test metrics in {run / 'eval' / 'metrics.json'}: "
        f"ssim {metrics['ssim']:.2f}, auc {metrics['auc']:.2f}, scc {metrics['scc']:.2f})",
        f"Attri-VAE traversal of {attribute} for {subject['subject']}: {traversal / 'grid.png'} and step_XX.nii.gz",
        f"Attri-VAE attention maps for {subject['subject']}: {attention}/attention_class.png and "
        f"attention_{attribute}.png; open the .nii.gz over {subject['image']} in 3D Slicer or ITK-SNAP",
    ]
