"""``medlatent train-prior``, ``sample`` and ``evaluate --prior``: autoregressive priors over a VQ-VAE run's codes.

A run keeps one prior per kind in ``RUN/prior/<kind>/`` (``pixelcnn``, ``transformer``), so both
can be trained on one VQ-VAE and compared. Each holds ``config.yaml`` (its ``prior`` and ``train``
sections), ``prior_info.json`` (grid shapes, codebook sizes, classes, voxel spacing),
``checkpoints/``, ``metrics.csv``, ``tb/``, ``figures/`` and, after ``evaluate --prior``,
``eval.json``. The code grids of the run's splits are encoded once into ``RUN/prior/codes.pt``,
keyed to the VQ-VAE checkpoint and data settings, and shared by the kinds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import affine_to_spacing
from torch import nn

from medlatent import distributed as dist_utils
from medlatent.commands.runs import LoadedRun, load_run
from medlatent.config import (TrainSection, merge_into, parse_overrides, read_yaml_file, section_defaults,
                              validate_sections)
from medlatent.engine import fit, make_loader, run_evaluation, seed_everything
from medlatent.errors import InputError
from medlatent.figures import save_slice_grid
from medlatent.io import atomic_path
from medlatent.nifti import write_nifti
from medlatent.runs import cache_dir_for, checkpoint_path, load_checkpoint, prepare_run, read_json, write_config, write_json
from medlatent.vqvae3d.prior import (PRIOR_SECTIONS, PRIOR_TRAIN_DEFAULTS, PRIORS, CodeGridDataset, CodePrior,
                                     PriorTask, build_prior, decode_codes, sample_codes)
from medlatent.vqvae3d.prior_metrics import mean_pairwise_ssim, mmd_test, pooled_features, unigram_bits_per_code

__all__ = ["train_prior", "load_prior", "sample", "evaluate_prior", "prior_dirs", "prior_defaults"]

_SECTIONS = {**PRIOR_SECTIONS, "train": TrainSection}


def prior_defaults() -> dict[str, Any]:
    """The full default config of a prior run."""
    cfg = section_defaults(_SECTIONS)
    cfg["train"].update(PRIOR_TRAIN_DEFAULTS)
    return cfg


def _resolve(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    merge_into(cfg, overrides, strict=True, source=source)
    return validate_sections(cfg, _SECTIONS, source=source)


def prior_dirs(run: Path) -> dict[str, Path]:
    """The priors trained on ``run``: kind -> folder (``RUN/prior/<kind>``; a run made before priors
    were kept by kind has its one prior in ``RUN/prior`` itself)."""
    found = {kind: run / "prior" / kind for kind in PRIORS if (run / "prior" / kind / "config.yaml").is_file()}
    legacy = run / "prior" / "config.yaml"
    if legacy.is_file():
        kind = read_yaml_file(legacy).get("prior", {}).get("type", "transformer")
        found.setdefault(kind, run / "prior")
    return found


def _pick_prior(run: Path, kind: str | None) -> Path:
    """The folder of the ``--prior KIND`` asked for, else of the only (or most recently trained) prior."""
    found = {k: p for k, p in prior_dirs(run).items() if (p / "checkpoints" / "last.pt").is_file()}
    if not found:
        raise InputError(f"{run}: no trained prior; train one with `medlatent train-prior {run} --prior "
                         f"{kind or 'transformer'}`")
    if kind is not None:
        if kind not in found:
            raise InputError(f"{run}: --prior {kind}: no trained {kind} prior (trained: {', '.join(sorted(found))}); "
                             f"train one with `medlatent train-prior {run} --prior {kind}`")
        return found[kind]
    return max(found.values(), key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)


# --- encoding the splits once --------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _spacing_of(image: torch.Tensor) -> list[float]:
    """Voxel size in mm of a preprocessed MetaTensor (MONAI's ``affine_to_spacing``); 1 mm without an affine."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return [1.0, 1.0, 1.0]
    affine = torch.as_tensor(affine).double()
    if affine.dim() == 3:
        affine = affine[0]
    return [float(v) for v in affine_to_spacing(affine, r=3)]


MIRRORED = "train_mirrored"  # the training volumes flipped left-right (RAS axis 0), then encoded


def encoded_splits(state: LoadedRun, batch_size: int = 4, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Any]:
    """Code grids of the run's splits, encoded once and cached in ``RUN/prior/codes.pt``.

    ``splits`` may name :data:`MIRRORED`: the training split's volumes mirrored left-right
    before encoding (``prior.mirror``).

    The cache is keyed to the VQ-VAE checkpoint's bytes and the data section, so a retrained
    VQ-VAE or changed preprocessing re-encodes; it is loaded with ``weights_only=True``. Returns
    ``{"key", "spacing": [3], "volume_shape": [3], "classes", "splits": {split: {"codes": [LongTensor
    [N, d, h, w] per level], "labels": LongTensor [N] | None, "subjects": [str]}}}``.
    """
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    run, vq_cfg, vqvae = state.run, state.cfg, state.model
    key = hashlib.sha1(json.dumps({"checkpoint": _file_digest(checkpoint_path(run, "best")),
                                   "data": vq_cfg["data"]}, sort_keys=True, default=str).encode()).hexdigest()
    cache = run / "prior" / "codes.pt"
    stored = load_checkpoint(cache) if cache.is_file() else {}
    if stored.get("key") == key and all(s in stored["splits"] for s in splits):
        return stored
    records, info = load_split_records(vq_cfg["data"])
    # a cache of the same checkpoint and data keeps its splits; only the missing ones are encoded
    result: dict[str, Any] = stored if stored.get("key") == key else {
        "key": key, "classes": info.classes, "splits": {}, "spacing": None, "volume_shape": None}
    for split in splits:
        if split in result["splits"]:
            continue
        mirrored = split == MIRRORED
        rows = records.get("train" if mirrored else split) or []
        grids: list[list[torch.Tensor]] = []
        labels: list[int] = []
        subjects: list[str] = []
        if rows:
            dataset = make_dataset(rows, vq_cfg["data"], train=False, cache_dir=cache_dir_for(vq_cfg, run))
            for batch in make_loader(dataset, batch_size, 0):
                image = batch["image"]
                if result["spacing"] is None:
                    result["spacing"] = _spacing_of(image)
                    result["volume_shape"] = [int(s) for s in image.shape[2:]]
                volumes = image.as_tensor().flip(2) if mirrored else image.as_tensor()  # [B, 1, X, Y, Z]
                with state.inference():
                    grids.append([g.cpu() for g in vqvae.encode_indices(volumes.to(state.device))])
                subjects.extend(batch["subject"])
                if "label" in batch:
                    labels.extend(int(v) for v in batch["label"])
        codes = [torch.cat([g[i] for g in grids]) for i in range(len(grids[0]))] if grids else []
        result["splits"][split] = {"codes": codes, "subjects": subjects,
                                   "labels": torch.tensor(labels, dtype=torch.long) if len(labels) == len(subjects) and labels else None}
    with atomic_path(cache) as tmp:
        torch.save(result, tmp)
    return result


# --- train-prior ---------------------------------------------------------------------------------

def _joined(split: dict[str, Any], mirrored: dict[str, Any]) -> dict[str, Any]:
    """The training grids and their mirrored copies as one split (labels follow their volumes)."""
    labels = (torch.cat([split["labels"], mirrored["labels"]])
              if split["labels"] is not None and mirrored["labels"] is not None else None)
    return {"codes": [torch.cat([a, b]) for a, b in zip(split["codes"], mirrored["codes"])], "labels": labels,
            "subjects": split["subjects"] + [f"{s} (mirrored)" for s in mirrored["subjects"]]}


def train_prior(run: str | Path, prior: str = "transformer", overrides: list[str] | None = None,
                resume: bool = False) -> Path:
    """Train a ``prior`` (pixelcnn | transformer) over ``run``'s code grids into ``RUN/prior/<prior>``.

    ``overrides`` are ``--set`` pairs on the ``prior`` and ``train`` sections (unknown keys are
    rejected). With ``resume`` the stored ``config.yaml`` is used and only ``train.*`` may be
    overridden (say, more epochs).
    """
    if prior not in PRIORS:
        raise InputError(f"--prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    changed = parse_overrides(overrides)
    if "type" in (changed.get("prior") or {}):
        raise InputError("--set prior.type: choose the kind with --prior instead")
    state = load_run(run, "train-prior")
    pdir = state.run / "prior" / prior
    trained = (pdir / "checkpoints" / "last.pt").is_file()
    if resume:
        if not trained:
            raise InputError(f"{state.run}: --resume: no {prior} prior to resume in {pdir}")
        if set(changed) - {"train"}:
            raise InputError(f"--set {sorted(set(changed) - {'train'})[0]}.*: a resumed prior keeps its "
                             f"architecture; only train.* may change")
        cfg = _resolve(prior_defaults(), read_yaml_file(pdir / "config.yaml"), source=str(pdir / "config.yaml"))
        cfg = _resolve(cfg, changed, source="--set")
    else:
        if trained:
            raise InputError(f"{state.run} already holds a trained {prior} prior in {pdir}; pass --resume to "
                             f"continue it, or train the other kind with --prior "
                             f"{next(k for k in PRIORS if k != prior)}")
        base = prior_defaults()
        base["prior"]["type"] = prior
        cfg = _resolve(base, changed, source="--set")

    splits = ("train", "val", "test") + ((MIRRORED,) if cfg["prior"]["mirror"] else ())
    data = encoded_splits(state, batch_size=cfg["prior"]["encode_batch_size"], splits=splits)
    train_split = data["splits"]["train"]
    if cfg["prior"]["mirror"]:
        train_split = _joined(train_split, data["splits"][MIRRORED])
    if not train_split["subjects"]:
        raise InputError(f"{state.run}: the training split is empty; nothing to train a prior on")
    prepare_run(cfg, pdir, resume)
    write_config(pdir, cfg)
    conditional = bool(cfg["prior"]["conditional"] and data["classes"] and train_split["labels"] is not None)
    label_counts = (torch.bincount(train_split["labels"], minlength=len(data["classes"])).tolist()
                    if conditional else None)
    info = {"type": prior,
            "levels": [{"shape": list(g.shape[1:]), "num_codes": int(k)}
                       for g, k in zip(train_split["codes"], state.model.num_codes)],
            "classes": data["classes"] if conditional else None, "label_counts": label_counts,
            "label_column": state.data_cfg.get("label"), "spacing": data["spacing"],
            "volume_shape": data["volume_shape"]}
    write_json(pdir / "prior_info.json", info)

    seed_everything(int(cfg["train"]["seed"]))
    task = PriorTask(build_prior(cfg["prior"], info), conditional)
    val_split = data["splits"].get("val")
    val_set = CodeGridDataset(val_split) if val_split and val_split["subjects"] else None
    history = fit(task, CodeGridDataset(train_split), val_set, cfg, pdir, resume=resume)
    if history:
        last = history[-1]
        shown = last.get("val_bits_per_code", last.get("train_bits_per_code"))
        print(f"prior ({prior}): {len(history)} epochs, bits per code {shown:.4g}; saved in {pdir}")
    return pdir


def load_prior(run: str | Path, kind: str | None = None, which: str = "best") -> tuple[CodePrior, dict[str, Any], dict[str, Any], Path]:
    """The trained prior of kind ``kind`` (default: the only or latest one), in eval mode on the CPU,
    with its config, its ``prior_info.json`` and its folder."""
    pdir = _pick_prior(Path(run), kind)
    cfg = _resolve(prior_defaults(), read_yaml_file(pdir / "config.yaml"), source=str(pdir / "config.yaml"))
    info = read_json(pdir / "prior_info.json")
    model = build_prior(cfg["prior"], info)
    state = load_checkpoint(checkpoint_path(pdir, which))
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise InputError(f"{pdir}: checkpoint does not match its config.yaml: {err}") from None
    return model.eval(), cfg, info, pdir


# --- sample --------------------------------------------------------------------------------------

def _labels_for(label: str | None, n: int, info: dict[str, Any], run: Path,
                generator: torch.Generator) -> torch.Tensor | None:
    """Class indices ``[n]`` for sampling: the named class, or drawn from the training frequencies."""
    classes = info.get("classes")
    if not classes:
        if label is not None:
            raise InputError(f"sample: --label {label!r}: the prior of {run} is not class-conditional "
                             f"(the run has no data.label, or prior.conditional was false)")
        return None
    if label is not None:
        if str(label) not in [str(c) for c in classes]:
            raise InputError(f"sample: --label {label!r} is not a class of {run} "
                             f"({info.get('label_column')}: {', '.join(map(str, classes))})")
        return torch.full((n,), [str(c) for c in classes].index(str(label)), dtype=torch.long)
    counts = torch.tensor(info["label_counts"], dtype=torch.float)
    return torch.multinomial(counts / counts.sum(), n, replacement=True, generator=generator)


def ras_affine(spacing: list[float], shape: list[int]) -> np.ndarray:
    """A 4x4 RAS affine with ``spacing`` (mm) whose origin puts the volume's centre at (0, 0, 0)."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -np.asarray(spacing, dtype=float) * (np.asarray(shape, dtype=float) - 1) / 2
    return affine


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if not 0 < temperature < float("inf"):
        raise InputError(f"sample: --temperature must be a positive number, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise InputError(f"sample: --top-k must be a positive integer, got {top_k!r}")


def sample(run: str | Path, n: int = 8, label: str | None = None, temperature: float = 1.0, top_k: int | None = None,
           seed: int = 0, out: str | Path | None = None, prior: str | None = None, overwrite: bool = False) -> list[Path]:
    """``n`` new volumes from the run's prior (``prior``: its kind; default the only or latest one), written to ``out``.

    Writes ``sample_000.nii.gz`` ... (training spacing, RAS affine), ``samples.png`` (mid-slices
    of every sample) and ``samples.json`` (labels, settings). Returns the NIfTI paths.
    """
    from medlatent.commands.outputs import check_output_folder

    if n < 1:
        raise InputError(f"sample: -n must be at least 1, got {n}")
    if out is None:
        raise InputError("sample: -o DIR is required")
    _check_sampling(temperature, top_k)
    out = check_output_folder(out, [f"sample_{i:03d}.nii.gz" for i in range(n)] + ["samples.png", "samples.json"],
                              overwrite=overwrite)
    state = load_run(run, "sample")
    model, cfg, info, pdir = load_prior(state.run, prior)
    generator = torch.Generator().manual_seed(int(seed))
    labels = _labels_for(label, n, info, state.run, generator)
    torch.manual_seed(int(seed))
    started = time.perf_counter()
    codes = sample_codes(model, n, labels, temperature, top_k, generator, cfg["prior"]["sample_batch_size"])
    with state.inference():
        volumes = decode_codes(state.model, [c.to(state.device) for c in codes], cfg["prior"]["sample_batch_size"])
    seconds = time.perf_counter() - started
    affine = ras_affine(info["spacing"] or [1.0, 1.0, 1.0], list(volumes.shape[2:]))
    paths, names = [], []
    for i, volume in enumerate(volumes):
        path = out / f"sample_{i:03d}.nii.gz"
        write_nifti(volume[0], path, affine=affine)
        paths.append(path)
        names.append(f"#{i}" + (f" {info['classes'][int(labels[i])]}" if labels is not None else ""))
    save_slice_grid(list(volumes), names, out / "samples.png", title=f"{n} samples, T={temperature}, top-k={top_k}")
    write_json(out / "samples.json", {"run": str(state.run), "prior": cfg["prior"]["type"], "prior_dir": str(pdir),
                                      "n": n, "seed": seed, "temperature": temperature, "top_k": top_k,
                                      "labels": [info["classes"][int(v)] for v in labels] if labels is not None else None,
                                      "spacing": info["spacing"], "seconds_per_volume": seconds / n,
                                      "files": [p.name for p in paths]})
    print(f"wrote {n} samples from the {cfg['prior']['type']} prior to {out} ({seconds / n:.2f} s per volume)")
    return paths


# --- evaluate --prior ----------------------------------------------------------------------------

def _real_volumes(state: LoadedRun, split: str) -> torch.Tensor:
    """Preprocessed volumes of a split: ``[n, 1, D, H, W]``."""
    from medlatent.transforms.pipeline import make_dataset
    from medlatent.transforms.records import load_split_records

    records, _ = load_split_records(state.data_cfg)
    dataset = make_dataset(records.get(split) or [], state.data_cfg, train=False,
                           cache_dir=cache_dir_for(state.cfg, state.run))
    return torch.stack([dataset[i]["image"].as_tensor().float() for i in range(len(dataset))])


def evaluate_prior(run: str | Path, prior: str | None = None) -> dict[str, Any]:
    """``medlatent evaluate RUN --prior [KIND]``: write ``RUN/prior/<kind>/eval.json`` and return its figures.

    - ``test_bits_per_code``: test-split NLL of the prior in bits per code (all levels together),
      next to ``unigram_bits_per_code`` (code frequencies of the training split) for scale;
    - ``sample_seconds_per_volume``: wall time to draw and decode one volume (batched);
    - ``mmd``, ``mmd_p``: MMD between samples and real test volumes on the VQ-VAE's pooled
      encoder features, with its permutation p-value (small p: the two sets are distinguishable);
    - ``mmd_reconstructions``, ``mmd_reconstructions_p``: the same test against the VQ-VAE's
      reconstructions of the test volumes (their code grids decoded): the decoder is on both sides,
      so this is the prior's own gap; against real volumes even a perfect prior carries the
      decoder's (its samples are decoded code grids too);
    - ``diversity_samples`` / ``diversity_real``: mean pairwise SSIM among samples and among
      real test volumes (samples far above the real figure have collapsed onto few modes).
    """
    state = load_run(run, "evaluate --prior")
    model, cfg, info, pdir = load_prior(state.run, prior)
    data = encoded_splits(state, batch_size=cfg["prior"]["encode_batch_size"])
    test = data["splits"].get("test")
    if not test or not test["subjects"]:
        raise InputError(f"{state.run}: the test split is empty; nothing to evaluate the prior on")
    device = dist_utils.pick_device()
    model.to(device)
    task = PriorTask(model, bool(info.get("classes")))
    loader = make_loader(CodeGridDataset(test), int(cfg["train"]["batch_size"]), 0)
    means, rows = run_evaluation(task, model, loader, device)
    unigram = unigram_bits_per_code(data["splits"]["train"]["codes"], test["codes"], state.model.num_codes)

    ev = cfg["prior"]["eval"]
    generator = torch.Generator().manual_seed(int(ev["seed"]))
    labels = _labels_for(None, ev["num_samples"], info, state.run, generator)
    torch.manual_seed(int(ev["seed"]))
    started = time.perf_counter()
    codes = sample_codes(model, ev["num_samples"], labels, ev["temperature"], ev["top_k"], generator,
                         cfg["prior"]["sample_batch_size"])
    with state.inference():
        samples = decode_codes(state.model, [c.to(state.device) for c in codes], cfg["prior"]["sample_batch_size"])
    seconds = (time.perf_counter() - started) / ev["num_samples"]
    with state.inference():
        reconstructions = decode_codes(state.model, [c.to(state.device) for c in test["codes"]],
                                       cfg["prior"]["sample_batch_size"])

    real = _real_volumes(state, "test")
    vqvae: nn.Module = state.model.cpu()
    sample_features = pooled_features(vqvae, samples)
    mmd, mmd_p = mmd_test(sample_features, pooled_features(vqvae, real), permutations=ev["permutations"],
                          seed=ev["seed"])
    mmd_recon, mmd_recon_p = mmd_test(sample_features, pooled_features(vqvae, reconstructions),
                                      permutations=ev["permutations"], seed=ev["seed"])
    data_range = float(real.max() - real.min()) or 1.0
    result = {"prior": cfg["prior"]["type"], "test_bits_per_code": means["bits_per_code"],
              "unigram_bits_per_code": unigram, "sample_seconds_per_volume": seconds,
              "mmd": mmd, "mmd_p": mmd_p, "mmd_reconstructions": mmd_recon, "mmd_reconstructions_p": mmd_recon_p,
              "diversity_samples": mean_pairwise_ssim(samples, data_range, ev["max_pairs"], ev["seed"]),
              "diversity_real": mean_pairwise_ssim(real, data_range, ev["max_pairs"], ev["seed"]),
              "num_samples": ev["num_samples"], "num_test": len(rows), "temperature": ev["temperature"],
              "top_k": ev["top_k"]}
    result.update({f"test_{k}": v for k, v in means.items() if k.startswith("bits_per_code_")})
    write_json(pdir / "eval.json", result)
    print(f"prior eval ({cfg['prior']['type']}): " + ", ".join(f"{k} {result[k]:.4g}" for k in (
        "test_bits_per_code", "unigram_bits_per_code", "sample_seconds_per_volume", "mmd", "mmd_p",
        "mmd_reconstructions_p", "diversity_samples", "diversity_real")))
    return result
