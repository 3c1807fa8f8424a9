"""The ``medlatent`` command line: parse, load the config or run, call one function.

Exit codes: 0 done, 2 bad input (the message names the file, row or key), 1 a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medlatent.errors import InputError

__all__ = ["main", "build_parser"]


def _run_family(run: str, command: str) -> Callable[..., Any]:
    """The function of the run's model family that implements ``command``."""
    from medlatent.config import family_module
    from medlatent.runs import load_run_config

    cfg = load_run_config(run)
    family = family_module(cfg["model"])
    function = getattr(family, f"cmd_{command.replace('-', '_')}", None)
    if function is None:
        available = sorted(name[4:].replace("_", "-") for name in dir(family) if name.startswith("cmd_"))
        raise InputError(f"{run}: '{command}' is not available for {cfg['model']} runs; "
                         f"available: {', '.join(available)}")
    return function


# --- data -------------------------------------------------------------------------------

def _data_manifest(args: argparse.Namespace) -> int:
    from medlatent.transforms.manifest import build_manifest, write_manifest

    tables = [{"path": args.table, "id_column": args.id_column}] if args.table else []
    if args.table and not args.id_column:
        raise InputError("--table needs --id-column naming the subject ID column")
    frame = build_manifest(args.images, args.masks, tables)
    write_manifest(frame, args.output)
    print(f"wrote {args.output}: {len(frame)} rows")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from medlatent.transforms.check import check_manifest

    report = check_manifest(args.manifest, attributes=args.attributes, label=args.label)
    if report.problems:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(f"{args.manifest}: {len(report.problems)} problem(s)", file=sys.stderr)
        return 2
    print(report.summary)
    return 0


def _data_attributes(args: argparse.Namespace) -> int:
    from medlatent.transforms.attributes import compute_attributes, parse_label_groups
    from medlatent.transforms.manifest import read_manifest, write_manifest

    groups = parse_label_groups(args.labels)
    frame = compute_attributes(read_manifest(args.manifest), groups)
    write_manifest(frame, args.output)
    print(f"wrote {args.output}: {len(frame)} subjects x {len(frame.columns) - 1} attributes")
    return 0


def _data_from_medmnist(args: argparse.Namespace) -> int:
    from medlatent.transforms.medmnist import npz_to_nifti

    manifest = npz_to_nifti(args.npz, args.output)
    print(f"wrote {manifest}")
    return 0


# --- training and runs ------------------------------------------------------------------

def _train(args: argparse.Namespace) -> int:
    from medlatent.config import load_config, parse_overrides
    from medlatent.train import train

    if args.resume:
        # the run's own config.yaml is used; --set may only lengthen it
        run = train(load_config(args.config), args.out, resume=True, lengthen=parse_overrides(args.set))
    else:
        run = train(load_config(args.config, args.set), args.out)
    print(f"run: {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _run_family(args.run, "evaluate")(Path(args.run), split=args.split, prior=args.prior)
    return 0


MASK_HELP = "the scan's mask (e.g. brain mask), needed for runs trained with data.mask_image"


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _reconstruct(args: argparse.Namespace) -> int:
    _run_family(args.run, "reconstruct")(Path(args.run), Path(args.input), Path(args.output), mask=_path(args.mask))
    return 0


def _encode(args: argparse.Namespace) -> int:
    _run_family(args.run, "encode")(Path(args.run), Path(args.manifest), Path(args.output),
                                    codes_dir=Path(args.codes) if args.codes else None)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from medlatent.probe import probe

    probe(Path(args.features), args.target, table=Path(args.table) if args.table else None,
          folds=args.folds, seed=args.seed, output=Path(args.json) if args.json else None)
    return 0


def _latent_map(args: argparse.Namespace) -> int:
    from medlatent.latent_map import latent_map

    latent_map(Path(args.run), [Path(m) for m in args.manifests], Path(args.output), color=args.color,
               method=args.method, seed=args.seed)
    return 0


def _traverse(args: argparse.Namespace) -> int:
    _run_family(args.run, "traverse")(Path(args.run), Path(args.input), args.attribute, steps=args.steps,
                                      value_range=tuple(args.range), out=Path(args.output), mask=_path(args.mask))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    _run_family(args.run, "interpolate")(Path(args.run), Path(args.input_a), Path(args.input_b), steps=args.steps,
                                         out=Path(args.output), masks=(_path(args.mask_a), _path(args.mask_b)))
    return 0


def _attention(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.manifest is None):
        raise InputError("attention: give exactly one of INPUT or --manifest M")
    if (args.attribute is None) == (not args.use_class):
        raise InputError("attention: give exactly one of --attribute NAME or --class")
    _run_family(args.run, "attention")(Path(args.run), Path(args.input) if args.input else None,
                                       manifest=Path(args.manifest) if args.manifest else None,
                                       attribute=args.attribute, use_class=args.use_class, layer=args.layer,
                                       out=Path(args.output), method=args.method, mask=_path(args.mask),
                                       evidence=args.evidence)
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    _run_family(args.run, "train-prior")(Path(args.run), prior=args.prior, overrides=args.set, resume=args.resume)
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError(f"sample: -n must be at least 1, got {args.n}")
    _run_family(args.run, "sample")(Path(args.run), n=args.n, label=args.label, temperature=args.temperature,
                                    top_k=args.top_k, seed=args.seed, out=Path(args.output))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medlatent.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medlatent", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo", help="phantoms -> data check -> both model families -> exports")
    p.add_argument("--out", default="medlatent_demo", help="output folder (default ./medlatent_demo)")
    p.add_argument("--quick", action="store_true", help="smallest settings (used by the tests)")
    p.set_defaults(func=_demo)

    data = commands.add_parser("data", help="manifests, checks, attributes, MedMNIST").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("manifest", help="build a manifest CSV from an images glob and a clinical table")
    p.add_argument("--images", required=True, help="glob of image files, e.g. 'T1/*.nii.gz' (quote it)")
    p.add_argument("--masks", help="glob of mask files matched to images by subject ID")
    p.add_argument("--table", help="CSV with one row per subject")
    p.add_argument("--id-column", help="subject ID column of --table")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_data_manifest)
    p = data.add_parser("check", help="validate a manifest; bad rows are named, exit 2")
    p.add_argument("manifest")
    p.add_argument("--attributes", nargs="*", default=None, help="attribute columns that must be numeric")
    p.add_argument("--label", default=None, help="label column")
    p.set_defaults(func=_data_check)
    p = data.add_parser("attributes", help="SimpleITK shape statistics of label groups in the masks")
    p.add_argument("manifest")
    p.add_argument("--labels", nargs="+", required=True, metavar="NAME=L1,L2", help="e.g. ventricles=51,52")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_data_attributes)
    p = data.add_parser("from-medmnist", help="MedMNIST 3D .npz -> NIfTI files + manifest")
    p.add_argument("npz")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_data_from_medmnist)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run directory (default runs/MODEL-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch, with its own config; "
                   "--set train.epochs / train.max_minutes (the run's total) lengthen it")
    p.set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="metrics of a trained run on a split")
    p.add_argument("run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--prior", action="store_true", help="evaluate the run's autoregressive prior")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("reconstruct", help="reconstruct a volume, written in the input's geometry")
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--mask", help=MASK_HELP)
    p.set_defaults(func=_reconstruct)

    p = commands.add_parser("encode", help="pooled latent features per subject -> CSV")
    p.add_argument("run")
    p.add_argument("manifest")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--codes", help="folder for each subject's code-index grid (.npy)")
    p.set_defaults(func=_encode)

    p = commands.add_parser("probe", help="predict a column from features (cross-validated)")
    p.add_argument("features")
    p.add_argument("--target", required=True)
    p.add_argument("--table", help="CSV joined on subject that holds the target")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures as JSON")
    p.set_defaults(func=_probe)

    p = commands.add_parser("latent-map", help="2D map of pooled latents of one or more datasets")
    p.add_argument("run")
    p.add_argument("manifests", nargs="+")
    p.add_argument("--color", help="manifest column to colour by (default: dataset)")
    p.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_latent_map)

    p = commands.add_parser("traverse", help="move one attribute's latent dimension and decode")
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("--attribute", required=True)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--range", type=float, nargs=2, default=[-3.0, 3.0], metavar=("LOW", "HIGH"))
    p.add_argument("--mask", help=MASK_HELP)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_traverse)

    p = commands.add_parser("interpolate", help="decode along the line between two subjects' latents")
    p.add_argument("run")
    p.add_argument("input_a")
    p.add_argument("input_b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--mask-a", help=MASK_HELP + " (INPUT_A)")
    p.add_argument("--mask-b", help=MASK_HELP + " (INPUT_B)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_interpolate)

    p = commands.add_parser("attention", help="attention maps (HiResCAM / Grad-CAM) as NIfTI over the scan, plus PNGs")
    p.add_argument("run")
    p.add_argument("input", nargs="?")
    p.add_argument("--manifest")
    p.add_argument("--attribute")
    p.add_argument("--class", dest="use_class", action="store_true", help="explain the classifier's logit")
    p.add_argument("--layer", help="encoder layer name (default: last with >= 4 voxels per axis)")
    p.add_argument("--method", choices=("hirescam", "gradcam"),
                   help="hirescam (default: faithful after a flatten + linear head) or gradcam (channel-averaged gradients)")
    p.add_argument("--evidence", choices=("positive", "negative"), default="positive",
                   help="positive (default, Grad-CAM's ReLU): where the activation raises the target; negative: where "
                        "it lowers it, e.g. dark CSF for a ventricle volume (files get a _negative suffix)")
    p.add_argument("--mask", help=MASK_HELP + "; with --manifest, its 'mask' column")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_attention)

    p = commands.add_parser("train-prior", help="train an autoregressive prior over a VQ-VAE run's codes")
    p.add_argument("run")
    p.add_argument("--prior", default="transformer", choices=["pixelcnn", "transformer"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_train_prior)

    p = commands.add_parser("sample", help="sample new volumes from a run's prior")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--label")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"medlatent: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
