"""``medlatent export``: a trained run as a MONAI bundle that runs without medlatent's CLI.

A bundle (docs/export.md; MONAI's bundle specification) is a folder::

    configs/metadata.json    what goes in and comes out, versions, the run's test metrics
    configs/inference.json   the run's preprocessing, network and inversion to the input's geometry
    models/model.pt          the run's state dict (weights only)
    models/model.ts          TorchScript of what can be scripted
    docs/README.md           the model card, generated from the run
    docs/license.txt, LICENSE

``python -m monai.bundle run --config_file DIR/configs/inference.json --input scan.nii.gz
--output_dir out/`` writes the same volumes as ``medlatent reconstruct`` / ``medlatent
attention``. The network classes are imported from the installed medlatent package (they are the
code the run was trained with; see docs/export.md for why not a copy under ``scripts/``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import medlatent
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.errors import InputError
from medlatent.io import write_text_atomic
from medlatent.runs import checkpoint_path, load_checkpoint, read_json

__all__ = ["export", "FORMATS", "bundle_network", "REQUIRED_METADATA", "TENSOR_KEYS"]

FORMATS = ("bundle",)

#: the keys MONAI's bundle specification (mb_specification.rst) makes mandatory in metadata.json
REQUIRED_METADATA = ("version", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version",
                     "task", "description", "authors", "copyright", "network_data_format")
#: the keys every input and output of ``network_data_format`` must have
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
               "is_patch_data", "channel_def")

INTENDED_USE = ("Research use only. Not a medical device; not for diagnosis, treatment or any clinical decision. "
                "Validated only on the data and metrics stated in docs/README.md.")


@dataclasses.dataclass
class Output:
    """One per-voxel output channel of the bundle network, and how it is written."""

    name: str             # file postfix and metadata key
    description: str
    format: str           # the specification's tensor format: magnitude, latent, ...
    nearest: bool = False  # invert with nearest-neighbour (code indices) instead of (tri)linear
    value_range: tuple[float, float] | None = None  # clip after inverting (and the metadata's value_range)
    dtype: str = "float32"


@dataclasses.dataclass
class BundleSpec:
    """What a family's bundle holds: its network (class and arguments), outputs and descriptions."""

    target: str                      # dotted path of the network class (importable from installed medlatent)
    kwargs: dict[str, Any]           # its constructor arguments, plain data
    outputs: list[Output]            # channels of the network's output, in order
    task: str
    description: str
    extra_postprocessing: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra_outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # non-voxel outputs
    torchscript: str = ""            # what models/model.ts holds, and what could not be scripted
    #: ``(bundle network, example input [1, 1, D, H, W]) -> traced module`` for models/model.ts
    trace: Callable[[nn.Module, torch.Tensor], torch.jit.ScriptModule] | None = None
    required_packages: tuple[str, ...] = ()


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _vqvae3d_spec(state: LoadedRun) -> BundleSpec:
    from medlatent.vqvae3d.bundle import VQVAE3dBundleNet
    from medlatent.vqvae3d.family import model_kwargs

    kwargs = model_kwargs(state.cfg)
    names = VQVAE3dBundleNet(**kwargs).channel_names()
    outputs = [Output("reconstruction", "the reconstruction (decoded quantized codes), in model intensity units",
                      "magnitude")]
    factors = ([state.model.grid_factor] if state.model.levels == 1
               else [state.model.grid_factor, state.model.downsampling])
    for name, codes, factor in zip(names[1:], state.model.num_codes, factors):
        outputs.append(Output(name, f"code index (0..{codes - 1}) of the {factor}^3-voxel block each voxel lies in",
                              "latent", nearest=True, value_range=(0.0, float(codes - 1)), dtype="int16"))
    return BundleSpec(
        target=_class_path(VQVAE3dBundleNet), kwargs=kwargs, outputs=outputs,
        task="3D VQ-VAE: reconstruct a scan and give its discrete latent code grid",
        description=(f"A {state.model.levels}-level 3D VQ-VAE (medlatent vqvae3d) trained on "
                     f"{state.data_cfg['spatial_size']} volumes. For each input scan it writes the reconstruction and "
                     "the code grid(s) as label maps, both in the input's own grid and affine."),
        torchscript="the whole network (forward(x) -> the reconstruction and code grids stacked on channels, as "
                    "network_def), traced with torch.jit.trace",
        trace=lambda net, x: torch.jit.trace(net, x), required_packages=("nibabel",))


def _attrivae_spec(state: LoadedRun) -> BundleSpec:
    from medlatent.attrivae.attention import MapSettings, resolve_layer
    from medlatent.attrivae.attributes import AttributeMap
    from medlatent.attrivae.bundle import AttriVAEBundleNet, SaveLatentd
    from medlatent.attrivae.family import model_kwargs

    amap = AttributeMap.load(state.run)
    net = state.cfg["net"]
    layer, _ = resolve_layer(state.model, net["attention_layer"])  # as `medlatent attention` resolves it
    default = MapSettings()  # the attention API's defaults, as `medlatent attention` uses them
    method, evidence = net["attention_method"] or default.method, default.evidence
    targets: list[tuple[str, int | None]] = []
    if state.model.classifier is not None:
        targets.append(("class", None))
    targets += [(name, amap.dim_of(name)) for name in amap.regularized]
    kwargs = {**model_kwargs(state.cfg, amap), "targets": [dim for _, dim in targets], "attention_layer": layer,
              "attention_method": method, "attention_evidence": evidence}
    outputs = [Output("reconstruction", "the reconstruction of the latent mean, in model intensity units", "magnitude")]
    for name, dim in targets:
        what = (f"the classifier's logit ({amap.label})" if dim is None else f"latent dimension {dim} ({name})")
        outputs.append(Output(f"attention_{name}", f"{method} attention map ({evidence} evidence) "
                              f"of {what} at {layer}, in [0, 1]", "magnitude", value_range=(0.0, 1.0)))
    regularized = dict(zip(amap.regularized, amap.dims))
    save_latent = {"_target_": _class_path(SaveLatentd), "keys": "image", "network": "@network",
                   "output_dir": "@output_dir", "regularized": regularized, "classes": amap.classes}
    latent_dim = int(net["latent_dim"])
    extra = {"latent_mean": {
        "type": "tuples", "format": "latent", "modality": "n/a", "num_channels": 1, "spatial_shape": [latent_dim],
        "dtype": "float32", "value_range": [], "is_patch_data": False,
        "channel_def": {"0": f"encoder mean mu; regularised attributes on dims {regularized}"},
        "file": "<scan>_latent.json: latent_mean",
        "description": f"the encoder mean mu ({latent_dim} values); regularised attributes on dims {regularized}"}}
    if state.model.classifier is not None:
        extra["probability"] = {
            "type": "probabilities", "format": "classes", "modality": "n/a", "num_channels": len(amap.classes),
            "spatial_shape": [], "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
            "channel_def": {str(i): c for i, c in enumerate(amap.classes)},
            "file": "<scan>_latent.json: probability",
            "description": f"the classifier's probability of each class of {amap.label}: {amap.classes}"}
    return BundleSpec(
        target=_class_path(AttriVAEBundleNet), kwargs=kwargs, outputs=outputs,
        task="Attri-VAE: reconstruct a scan, give its latent mean, class probability and attention maps",
        description=(f"An attribute-regularised VAE (medlatent attrivae, Cetin et al.) trained on "
                     f"{state.data_cfg['spatial_size']} volumes; regularised attributes: {regularized or 'none'}; "
                     f"classifier: {amap.label or 'none'}. For each input scan it writes the reconstruction and the "
                     "attention maps in the input's grid and affine, and the latent mean and class probabilities "
                     "as JSON."),
        extra_postprocessing=[save_latent], extra_outputs=extra,
        torchscript=("the encoder, decoder and classifier: forward(x) -> reconstruction [B, 1, D, H, W], "
                     "encode(x) -> (mu, logvar), classify(mu) -> logits, traced with torch.jit.trace. The attention "
                     "maps are not in it: they are computed by captum with autograd hooks on an encoder layer, "
                     "which TorchScript cannot record"),
        trace=_trace_attrivae, required_packages=("nibabel", "captum"))


def _trace_attrivae(net: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    from medlatent.attrivae.bundle import AttriVAETraceable

    mu = net.encode(x)[0].detach()
    methods = {"forward": x, "encode": x}
    if net.classifier is not None:
        methods["classify"] = mu
    return torch.jit.trace_module(AttriVAETraceable(net).eval(), methods)


SPECS: dict[str, Callable[[LoadedRun], BundleSpec]] = {"vqvae3d": _vqvae3d_spec, "attrivae": _attrivae_spec}


def bundle_network(state: LoadedRun, spec: BundleSpec) -> nn.Module:
    """The bundle's ``network_def``, built by MONAI's ConfigParser as ``monai.bundle run`` builds it, with the
    run's weights, in eval mode on the CPU."""
    from monai.bundle import ConfigParser

    net = ConfigParser({"network_def": network_def(spec)}).get_parsed_content("network_def")
    net.load_state_dict(state.model.state_dict())
    return net.cpu().eval()


def network_def(spec: BundleSpec) -> dict[str, Any]:
    """The ``network_def`` entry of inference.json: the class from the installed medlatent, the run's arguments."""
    return {"_target_": spec.target, **spec.kwargs}


# --- metadata ---------------------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _input_range(data_cfg: dict[str, Any]) -> list[float]:
    return {"percentile": [0, 1], "minmax": [0, 1]}.get(data_cfg.get("intensity") or "none", [])


def _test_metrics(run: Path) -> dict[str, Any] | None:
    path = run / "eval" / "metrics.json"
    return read_json(path) if path.is_file() else None


def _plain(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Numbers (and nested dicts of numbers) of the metrics; NaN -> None so the JSON is strict."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value
    return clean(dict(metrics or {}))


def build_metadata(state: LoadedRun, spec: BundleSpec, authors: str, modality: str = "MR",
                   version: str = "0.1.0") -> dict[str, Any]:
    """``configs/metadata.json``: every key the bundle specification requires, plus intended use and test metrics."""
    size = [int(s) for s in state.data_cfg["spatial_size"]]
    ckpt = checkpoint_path(state.run, state.checkpoint)
    packages = {"medlatent": _version("medlatent"), "fire": _version("fire"),
                **{p: _version(p) for p in spec.required_packages}}
    inputs = {"image": {
        "type": "image", "format": "hounsfield" if modality == "CT" and not _input_range(state.data_cfg)
        else "magnitude", "modality": modality, "num_channels": 1, "spatial_shape": size, "dtype": "float32",
        "value_range": _input_range(state.data_cfg), "is_patch_data": False,
        "channel_def": {"0": "the scan after the run's preprocessing (configs/inference.json#preprocessing)"}}}
    pred = {"type": "image", "format": spec.outputs[0].format, "modality": modality,
            "num_channels": len(spec.outputs), "spatial_shape": size, "dtype": "float32", "value_range": [],
            "is_patch_data": False,
            "channel_def": {str(i): f"{o.name}: {o.description}" for i, o in enumerate(spec.outputs)}}
    outputs: dict[str, Any] = {"pred": pred}
    for o in spec.outputs:
        outputs[o.name] = {
            "type": "image", "format": o.format, "modality": modality, "num_channels": 1,
            "spatial_shape": ["*", "*", "*"], "dtype": o.dtype,
            "value_range": list(o.value_range) if o.value_range else [], "is_patch_data": False,
            "channel_def": {"0": o.description}, "file": f"<scan>_{o.name}.nii.gz, in the input's grid and affine"}
    outputs.update(spec.extra_outputs)
    metrics = _test_metrics(state.run)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20240725.json",
        "version": version,
        "changelog": {version: f"exported by medlatent {medlatent.__version__} from run {state.run.name} "
                               f"({ckpt.name}, epoch {state.epoch}) on {datetime.now(timezone.utc):%Y-%m-%d}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": packages,
        "optional_packages_version": {"SimpleITK": _version("SimpleITK")},
        "name": f"medlatent_{state.cfg['model']}_{state.run.name}",
        "task": spec.task,
        "description": spec.description,
        "authors": authors,
        "copyright": f"Copyright (c) {authors}",
        "license": "Apache-2.0 (code, see LICENSE); the weights inherit the terms of the training data (docs/README.md)",
        "data_source": str(state.data_cfg.get("manifest") or state.data_cfg.get("images") or "see docs/README.md"),
        "data_type": "nibabel",
        "intended_use": INTENDED_USE,
        "eval_metrics": _plain(metrics) if metrics else {"note": "not evaluated: run `medlatent evaluate RUN`"},
        "references": REFERENCES[state.cfg["model"]],
        "network_data_format": {"inputs": inputs, "outputs": outputs},
        "torchscript": spec.torchscript,
    }


REFERENCES = {
    "vqvae3d": ["van den Oord A, Vinyals O, Kavukcuoglu K. Neural Discrete Representation Learning. NeurIPS 2017.",
                "Razavi A, van den Oord A, Vinyals O. Generating Diverse High-Fidelity Images with VQ-VAE-2. "
                "NeurIPS 2019."],
    "attrivae": ["Cetin I, Stephens M, Camara O, Gonzalez Ballester MA. Attri-VAE: attribute-based interpretable "
                 "representations of medical images with variational autoencoders. Computerized Medical Imaging and "
                 "Graphics 2023.",
                 "Draelos RL, Carin L. Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional "
                 "neural networks. arXiv:2011.08891, 2020."],
}


# --- inference.json ---------------------------------------------------------------------------------------

def _transform_config(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One preprocessing step as a config component: MONAI's by class name, medlatent's by dotted path.

    Functions (``select_fn``) become expressions over the names the config's ``imports`` bring in.
    """
    target = cls.__name__ if cls.__module__.startswith("monai.") else _class_path(cls)
    values = {k: f"${v.__name__}" if callable(v) else v for k, v in kwargs.items()}
    return {"_target_": target, **values}


def _imports(steps: list[tuple[type, dict[str, Any]]]) -> list[str]:
    functions = {(v.__module__, v.__name__) for _, kw in steps for v in kw.values() if callable(v)}
    return ["$import os", "$import torch"] + [f"$from {m} import {n}" for m, n in sorted(functions)]


def _write_steps(output: Output) -> list[dict[str, Any]]:
    """Invert one channel to the input's geometry (MONAI ``Invertd``), clip it to its range, write it (``SaveImaged``)."""
    key = f"pred_{output.name}"
    steps: list[dict[str, Any]] = [
        {"_target_": "Invertd", "keys": key, "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": output.nearest, "to_tensor": True}]
    if output.value_range is not None:
        low, high = output.value_range
        # as `medlatent attention` clips its maps after resampling (outputs.write_volume's value_range)
        steps.append({"_target_": "ThresholdIntensityd", "keys": key, "threshold": low, "above": True, "cval": low})
        steps.append({"_target_": "ThresholdIntensityd", "keys": key, "threshold": high, "above": False, "cval": high})
    steps.append({"_target_": "SaveImaged", "keys": key, "output_dir": "@output_dir", "output_postfix": output.name,
                  "output_ext": ".nii.gz", "output_dtype": f"$numpy.{output.dtype}", "resample": False,
                  "separate_folder": False, "squeeze_end_dims": True, "print_log": False})
    return steps


def inference_config(state: LoadedRun, spec: BundleSpec, bundle_root: Path) -> dict[str, Any]:
    """``configs/inference.json``: ``input`` (a scan) -> the run's preprocessing -> network -> outputs in ``output_dir``.

    The preprocessing is the run's (``transforms.pipeline.preprocessing_steps`` of its ``data``
    section), as the same MONAI transforms; every output is inverted to the input's grid and
    affine by ``Invertd`` over that preprocessing and written by ``SaveImaged``.
    """
    from medlatent.transforms.pipeline import needs_mask, preprocessing_steps

    masked = needs_mask(state.data_cfg) is not None  # the scan's mask is an input too, as in load_volume
    steps = preprocessing_steps(state.data_cfg, keys=("image", "mask") if masked else ("image",))
    datalist = "$[{'image': @input, 'mask': @mask}]" if masked else "$[{'image': @input}]"
    post: list[dict[str, Any]] = [
        {"_target_": "EnsureTyped", "keys": "pred", "track_meta": True},
        {"_target_": "SplitDimd", "keys": "pred", "output_postfixes": [o.name for o in spec.outputs], "dim": 0,
         "keepdim": True, "update_meta": False},
        *spec.extra_postprocessing,
    ]
    for output in spec.outputs:
        post.extend(_write_steps(output))
    config: dict[str, Any] = {
        "imports": _imports(steps),
        "bundle_root": str(bundle_root),
        "input": "scan.nii.gz",
        **({"mask": "mask.nii.gz"} if masked else {}),
        "output_dir": "out",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": network_def(spec),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [_transform_config(c, kw) for c, kw in steps]},
        "datalist": datalist,
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
                      "map_location": "@device", "strict": True}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }
    return config


# --- the folder -------------------------------------------------------------------------------------------

def check_bundle_folder(out: Path, run: Path, overwrite: bool) -> None:
    """InputError (before anything is read or written) when ``out`` cannot take a bundle."""
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is an existing file; give a folder for the bundle")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents or out.resolve() in run.resolve().parents:
        raise InputError(f"-o {out}: the bundle folder may not be the run {run}, inside it or contain it")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"-o {out} exists and is not empty; pass --overwrite to replace it")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` into place as ``out`` (an old ``out`` is removed only after)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def export(run: str | Path, out: str | Path, fmt: str = "bundle", overwrite: bool = False,
           authors: str = "the run's authors (not stated; pass --authors)", modality: str = "MR") -> Path:
    """Export ``run`` as a MONAI bundle folder ``out``; returns it.

    The bundle is written under a temporary name beside ``out`` and renamed when complete, so
    an interrupted export leaves no half bundle. ``out`` must be new or empty unless ``overwrite``.
    ``authors`` and ``modality`` (MR, CT, ...) go into the metadata and model card.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run, out = Path(run), Path(out).expanduser()
    check_bundle_folder(out, run, overwrite)
    state = load_run(run, "export")
    state.model.cpu()
    spec = SPECS[state.cfg["model"]](state)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_bundle(state, spec, tmp, authors, out.resolve(), modality)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote bundle {out}; run it with:\n  {run_command(out, mask=_example_mask(state))}")
    return out


def run_command(bundle: Path, input: str = "scan.nii.gz", output_dir: str = "out",  # noqa: A002
                mask: str | None = None) -> str:
    """The shell command that runs the bundle's inference on ``input`` (and its ``mask``, for runs that need one)."""
    config = Path(bundle) / "configs"
    return (f"python -m monai.bundle run --config_file {config / 'inference.json'} --meta_file "
            f"{config / 'metadata.json'} --input {input}" + (f" --mask {mask}" if mask else "")
            + f" --output_dir {output_dir}")


def _example_mask(state: LoadedRun) -> str | None:
    from medlatent.transforms.pipeline import needs_mask

    return "mask.nii.gz" if needs_mask(state.data_cfg) else None


def write_bundle(state: LoadedRun, spec: BundleSpec, folder: Path, authors: str, bundle_root: Path,
                 modality: str = "MR") -> None:
    """Every file of the bundle into ``folder`` (which exists), whose final place is ``bundle_root``."""
    net = bundle_network(state, spec)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    metadata = build_metadata(state, spec, authors, modality)
    _write_json(folder / "configs" / "metadata.json", metadata)
    inference = inference_config(state, spec, bundle_root)
    _write_json(folder / "configs" / "inference.json", inference)
    write_torchscript(net, spec, state.data_cfg, folder / "models" / "model.ts", metadata, inference)
    card = model_card(state, spec, metadata)
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "docs" / "README.md", card)
    license_text = _license_text()
    write_text_atomic(folder / "LICENSE", license_text)
    write_text_atomic(folder / "docs" / "license.txt", license_text)


def write_torchscript(net: nn.Module, spec: BundleSpec, data_cfg: dict[str, Any], path: Path,
                      metadata: dict[str, Any], inference: dict[str, Any]) -> None:
    """``models/model.ts``: ``spec.trace`` of the bundle network on a ``[1, 1, *spatial_size]`` input, saved by
    MONAI's ``save_net_with_metadata`` with metadata.json and inference.json as extra files (as ``ckpt_export``)."""
    from monai.data import save_net_with_metadata

    if spec.trace is None:
        return
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, *[int(s) for s in data_cfg["spatial_size"]], generator=generator)
    with torch.no_grad(), warnings.catch_warnings():
        # the shape checks in the forward become constants: model.ts takes [B, 1, *spatial_size], as documented
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = spec.trace(net, x)
    # into the bundle's temporary folder: the whole folder is renamed into place when complete
    save_net_with_metadata(traced, str(path), include_config_vals=False, meta_values=metadata,
                           more_extra_files={"inference.json": json.dumps(inference).encode()})


def _license_text() -> str:
    here = Path(__file__).resolve().parents[2] / "LICENSE"
    code = here.read_text() if here.is_file() else "Apache License, Version 2.0 (medlatent)\n"
    return ("The code this bundle runs (medlatent) is under the license below. The weights were trained on the data "
            "named in docs/README.md and inherit its terms: check them before sharing or using this bundle.\n\n"
            + code)


# --- the model card ---------------------------------------------------------------------------------------

def _splits(run: Path) -> dict[str, int]:
    path = run / "splits.csv"
    if not path.is_file():
        return {}
    counts = pd.read_csv(path)["split"].value_counts()
    return {split: int(counts.get(split, 0)) for split in ("train", "val", "test")}


def _budget(state: LoadedRun) -> str:
    train = state.cfg["train"]
    seconds = None
    last = state.run / "checkpoints" / "last.pt"
    if last.is_file():
        seconds = load_checkpoint(last).get("train_seconds")
    history = state.run / "metrics.csv"
    epochs = len(pd.read_csv(history)) if history.is_file() else state.epoch
    spent = f", {float(seconds) / 60:.1f} min of training" if seconds else ""
    return (f"{epochs} epoch(s) trained (config: train.epochs {train['epochs']}, train.max_minutes "
            f"{train.get('max_minutes')}), batch size {train['batch_size']}, lr {train['lr']}{spent}; "
            f"exported checkpoint: {state.checkpoint} (epoch {state.epoch})")


def _preprocessing_lines(data_cfg: dict[str, Any]) -> list[str]:
    from medlatent.transforms.pipeline import preprocessing_steps

    return [f"{i + 1}. `{cls.__name__}`({', '.join(f'{k}={v!r}' for k, v in kw.items() if k != 'keys')})"
            for i, (cls, kw) in enumerate(preprocessing_steps(data_cfg, keys=("image",)))]


def _metric_lines(metrics: dict[str, Any] | None) -> list[str]:
    if not metrics:
        return ["The run has no test metrics (RUN/eval/metrics.json): run `medlatent evaluate RUN` and export again."]
    lines = [f"Split `{metrics.get('split', 'test')}`, n = {metrics.get('n', '?')} volumes, checkpoint "
             f"`{metrics.get('checkpoint', '?')}` (epoch {metrics.get('epoch', '?')}):", "",
             "| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if key in ("split", "n", "checkpoint", "epoch"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"| {key} | {value:.4g} |")
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            lines.append(f"| {key} | " + ", ".join(f"{k}: {v:.4g}" for k, v in value.items()) + " |")
    return lines


def model_card(state: LoadedRun, spec: BundleSpec, metadata: dict[str, Any]) -> str:
    """``docs/README.md``: what the model is, its data, preprocessing, budget, test metrics (with n), limits, use."""
    data = state.data_cfg
    splits = _splits(state.run)
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items()) if splits else "not recorded (no RUN/splits.csv)"
    info_path = state.run / "data_info.json"
    info = read_json(info_path) if info_path.is_file() else {}
    outputs = "\n".join(f"- `<scan>_{o.name}.nii.gz`: {o.description}" for o in spec.outputs)
    outputs += "".join(f"\n- `{v['file']}`: {v['description']}" for v in spec.extra_outputs.values())
    lines = [
        f"# {metadata['name']}", "",
        f"**{spec.task}.** {spec.description}", "",
        "**Research use only.** Not a medical device; not for diagnosis, treatment or any clinical decision.", "",
        "## Data", "",
        f"- Source: `{metadata['data_source']}` (the manifest the run was trained from)",
        f"- Split sizes (subjects): {split_text}",
        f"- Attributes: {info.get('attributes') or data.get('attributes') or 'none'}; label: "
        f"{info.get('label') or data.get('label') or 'none'}"
        + (f" (classes {info.get('classes')})" if info.get("classes") else ""),
        f"- Modality: {metadata['network_data_format']['inputs']['image']['modality']}", "",
        "## Preprocessing", "",
        "Identical to training: the MONAI transforms of `configs/inference.json#preprocessing`, from the run's `data` "
        "section:", "", *_preprocessing_lines(data), "",
        "Intensities are not inverted: outputs stay in model units. Spatial steps are inverted (MONAI `Invertd`), so "
        "every volume comes back on the input scan's grid and affine.", "",
        "## Training budget", "", _budget(state), "",
        "## Test metrics", "", *_metric_lines(_test_metrics(state.run)), "",
        "## Outputs (per input scan)", "", outputs, "",
        "## Running it", "",
        "```", run_command(Path("BUNDLE"), mask=_example_mask(state)), "```", "",
        f"Needs an installed `medlatent` ({medlatent.__version__}; the network classes are imported from it), "
        "MONAI and `fire`. Moved the bundle? Add `--bundle_root NEW/PATH`.", "",
        "## TorchScript", "", f"`models/model.ts`: {spec.torchscript}.", "",
        "## Known limits", "",
        f"- Trained and tested only on the data above at {data['spatial_size']} voxels after preprocessing; other "
        "scanners, protocols, populations or anatomy are out of distribution and the outputs are then unverified.",
        f"- Small test split (n = {(_test_metrics(state.run) or {}).get('n', 'unknown')}): the metrics carry wide "
        "uncertainty.",
        "- Attention maps show where the encoder's evidence lies for a target; they are not segmentations and have "
        "not been validated as explanations on this data." if state.cfg["model"] == "attrivae" else
        "- Code grids are learned, unnamed categories; a code has no anatomical meaning by itself.",
        "",
        "## Provenance", "",
        f"Exported by medlatent {medlatent.__version__} (Python {platform.python_version()}, torch "
        f"{metadata['pytorch_version']}, MONAI {metadata['monai_version']}) from run `{state.run.name}`. "
        f"Authors: {metadata['authors']}.", "",
    ]
    return "\n".join(lines)
