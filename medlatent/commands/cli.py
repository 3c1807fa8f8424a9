"""The ``medlatent`` command line: parse, then call one function of the command layer.

Exit codes: 0 done, 2 bad input (the message names the file, row or key), 1 a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medlatent.errors import InputError

__all__ = ["main", "build_parser"]

RUN_HELP = "a run directory made by `medlatent train` (holds config.yaml and checkpoints/)"
INPUT_HELP = "a scan (NIfTI, NRRD, MHA, ...); outputs come back on its grid and affine"
MASK_HELP = "the scan's mask (e.g. brain mask), needed for runs trained with data.mask_image"
MANIFEST_HELP = "a manifest CSV (subject, image[, mask] columns) or a MedMNIST .npz; checked whole before anything is written"
OVERWRITE_HELP = "replace output files that already exist (never an input)"


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


# --- data -------------------------------------------------------------------------------

def _data_manifest(args: argparse.Namespace) -> int:
    from medlatent.commands.outputs import check_outputs
    from medlatent.transforms.manifest import build_manifest, write_manifest

    if args.table and not args.id_column:
        raise InputError("--table needs --id-column naming the subject ID column")
    check_outputs([args.output], [args.table], args.overwrite, option="-o")
    tables = [{"path": args.table, "id_column": args.id_column}] if args.table else []
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
    from medlatent.commands.outputs import check_outputs
    from medlatent.transforms.attributes import compute_attributes, parse_label_groups
    from medlatent.transforms.manifest import read_manifest, write_manifest

    check_outputs([args.output], [args.manifest], args.overwrite, option="-o")
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
    from medlatent.commands.registry import load_config
    from medlatent.commands.train import train
    from medlatent.config import parse_overrides

    if args.resume:
        # the run's own config.yaml is used; --set may only lengthen it
        run = train(load_config(args.config), args.out, resume=True, lengthen=parse_overrides(args.set))
    else:
        run = train(load_config(args.config, args.set), args.out)
    print(f"run: {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.prior is not None:
        from medlatent.commands.prior import evaluate_prior

        evaluate_prior(Path(args.run), prior=args.prior or None)
    else:
        from medlatent.commands.evaluate import evaluate

        evaluate(Path(args.run), split=args.split)
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from medlatent.commands.reconstruct import reconstruct

    reconstruct(Path(args.run), Path(args.input), Path(args.output), mask=_path(args.mask), overwrite=args.overwrite)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from medlatent.commands.encode import encode

    encode(Path(args.run), Path(args.manifest), Path(args.output), codes_dir=_path(args.codes),
           overwrite=args.overwrite)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from medlatent.commands.probe import probe

    probe(Path(args.features), args.target, table=_path(args.table), folds=args.folds, seed=args.seed,
          output=_path(args.json))
    return 0


def _latent_map(args: argparse.Namespace) -> int:
    from medlatent.commands.latent_map import latent_map

    latent_map(Path(args.run), [Path(m) for m in args.manifests], Path(args.output), color=args.color,
               method=args.method, seed=args.seed)
    return 0


def _traverse(args: argparse.Namespace) -> int:
    from medlatent.commands.traverse import traverse

    traverse(Path(args.run), Path(args.input), args.attribute, steps=args.steps, value_range=tuple(args.range),
             out=Path(args.output), mask=_path(args.mask), overwrite=args.overwrite)
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from medlatent.commands.traverse import interpolate

    interpolate(Path(args.run), Path(args.input_a), Path(args.input_b), steps=args.steps, out=Path(args.output),
                masks=(_path(args.mask_a), _path(args.mask_b)), overwrite=args.overwrite)
    return 0


def _attention(args: argparse.Namespace) -> int:
    from medlatent.commands.attention import attention

    attention(Path(args.run), _path(args.input), manifest=_path(args.manifest), attribute=args.attribute,
              use_class=args.use_class, layer=args.layer, out=Path(args.output), method=args.method,
              mask=_path(args.mask), evidence=args.evidence, baseline=args.baseline, patch_mm=args.patch_mm,
              overwrite=args.overwrite)
    return 0


def _report(args: argparse.Namespace) -> int:
    from medlatent.commands.report import report

    report(Path(args.run), _path(args.input), manifest=_path(args.manifest), mask=_path(args.mask),
           labels=args.labels, label_names=_path(args.label_names), out=Path(args.output), overwrite=args.overwrite)
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from medlatent.commands.prior import train_prior

    train_prior(Path(args.run), prior=args.prior, overrides=args.set, resume=args.resume)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from medlatent.commands.prior import sample

    sample(Path(args.run), n=args.n, label=args.label, temperature=args.temperature, top_k=args.top_k,
           seed=args.seed, out=Path(args.output), prior=args.prior, overwrite=args.overwrite)
    return 0


def _export(args: argparse.Namespace) -> int:
    from medlatent.commands.export import export

    export(Path(args.run), Path(args.output), fmt=args.format, overwrite=args.overwrite, authors=args.authors,
           modality=args.modality)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medlatent.commands.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from medlatent.attrivae.attention import BASELINES, EVIDENCE, METHODS
    from medlatent.vqvae3d.prior import PRIORS

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
    p.add_argument("-o", "--output", required=True, help="the manifest CSV to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_data_manifest)
    p = data.add_parser("check", help="validate a manifest; bad rows are named, exit 2")
    p.add_argument("manifest", help="the manifest CSV to check (every file it lists is opened)")
    p.add_argument("--attributes", nargs="*", default=None, help="attribute columns that must be numeric")
    p.add_argument("--label", default=None, help="label column")
    p.set_defaults(func=_data_check)
    p = data.add_parser("attributes", help="SimpleITK shape statistics of label groups in the masks")
    p.add_argument("manifest", help="a manifest CSV whose 'mask' column holds label maps")
    p.add_argument("--labels", nargs="+", required=True, metavar="NAME=L1,L2",
                   help="e.g. ventricles=51,52; NAME=OUTER:INNER measures a wall's thickness, e.g. wall=1,2,3,4:1")
    p.add_argument("-o", "--output", required=True, help="the CSV of attributes to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_data_attributes)
    p = data.add_parser("from-medmnist", help="MedMNIST 3D .npz -> NIfTI files + manifest")
    p.add_argument("npz", help="an official MedMNIST 3D .npz file")
    p.add_argument("-o", "--output", required=True, help="folder for the NIfTI files and manifest.csv")
    p.set_defaults(func=_data_from_medmnist)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="a YAML config (see configs/); every key is checked before anything is written")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run directory (default runs/MODEL-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch, with its own config; "
                   "--set train.epochs / train.max_minutes (the run's total) lengthen it")
    p.set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="metrics of a trained run on a split")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    p.add_argument("--prior", nargs="?", const="", choices=["", *PRIORS], metavar="KIND",
                   help="evaluate the run's autoregressive prior of this kind instead (default: the only or latest)")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("reconstruct", help="reconstruct a volume, written in the input's geometry")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("input", help=INPUT_HELP)
    p.add_argument("output", help="the reconstruction to write (.nii or .nii.gz)")
    p.add_argument("--mask", help=MASK_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_reconstruct)

    p = commands.add_parser("export", help="a run as a MONAI bundle (python -m monai.bundle run ...), with TorchScript "
                            "and a model card")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("-o", "--output", required=True, help="the bundle folder to write (new or empty, or --overwrite)")
    p.add_argument("--format", default="bundle", choices=["bundle"], help="export format (default bundle)")
    p.add_argument("--authors", default="the run's authors (not stated; pass --authors)",
                   help="authors (and copyright holder) written into the bundle's metadata and model card")
    p.add_argument("--modality", default="MR", help="imaging modality of the training data (MR, CT, ...; default MR)")
    p.add_argument("--overwrite", action="store_true", help="replace the folder's contents (never the run)")
    p.set_defaults(func=_export)

    p = commands.add_parser("encode", help="pooled latent features per subject -> CSV")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("manifest", help=MANIFEST_HELP)
    p.add_argument("-o", "--output", required=True, help="the features CSV to write")
    p.add_argument("--codes", help="folder for each subject's latent arrays (.npy): VQ-VAE code grids, Attri-VAE mu")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_encode)

    p = commands.add_parser("probe", help="predict a column from features (cross-validated)")
    p.add_argument("features", help="a features CSV from `medlatent encode`")
    p.add_argument("--target", required=True, help="the column to predict")
    p.add_argument("--table", help="CSV joined on subject that holds the target")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    p.add_argument("--json", help="also write the figures as JSON")
    p.set_defaults(func=_probe)

    p = commands.add_parser("latent-map", help="2D map of pooled latents of one or more datasets")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("manifests", nargs="+", help="one or more manifest CSVs, one colour each by default")
    p.add_argument("--color", help="manifest column to colour by (default: dataset)")
    p.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="embedding (default pca)")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedding")
    p.add_argument("-o", "--output", required=True, help="the PNG to write (coordinates go beside it as CSV)")
    p.set_defaults(func=_latent_map)

    p = commands.add_parser("traverse", help="move one attribute's latent dimension and decode")
    p.add_argument("run", help=RUN_HELP + "; an Attri-VAE run")
    p.add_argument("input", help=INPUT_HELP)
    p.add_argument("--attribute", required=True, help="a regularised attribute of the run (its latent dim is moved)")
    p.add_argument("--steps", type=int, default=9, help="number of decoded steps (default 9, at least 2)")
    p.add_argument("--range", type=float, nargs=2, default=[-3.0, 3.0], metavar=("LOW", "HIGH"),
                   help="latent values of the first and last step (default -3 3)")
    p.add_argument("--mask", help=MASK_HELP)
    p.add_argument("-o", "--output", required=True, help="folder for step_XX.nii.gz, grid.png and steps.csv")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_traverse)

    p = commands.add_parser("interpolate", help="decode along the line between two subjects' latents")
    p.add_argument("run", help=RUN_HELP + "; an Attri-VAE run")
    p.add_argument("input_a", help=INPUT_HELP + " (t = 0; outputs use its geometry)")
    p.add_argument("input_b", help="the second scan (t = 1)")
    p.add_argument("--steps", type=int, default=8, help="number of decoded steps (default 8, at least 2)")
    p.add_argument("--mask-a", help=MASK_HELP + " (INPUT_A)")
    p.add_argument("--mask-b", help=MASK_HELP + " (INPUT_B)")
    p.add_argument("-o", "--output", required=True, help="folder for step_XX.nii.gz, grid.png and steps.csv")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_interpolate)

    p = commands.add_parser("attention", help="attention maps (captum: HiResCAM, Grad-CAM, IG, occlusion...) as NIfTI over the scan, plus PNGs")
    p.add_argument("run", help=RUN_HELP + "; an Attri-VAE run")
    p.add_argument("input", nargs="?", help=INPUT_HELP + " (or --manifest)")
    p.add_argument("--manifest", help=MANIFEST_HELP)
    p.add_argument("--attribute", help="explain this regularised attribute's latent mean mu_k")
    p.add_argument("--class", dest="use_class", action="store_true", help="explain the classifier's logit")
    p.add_argument("--layer", help="encoder layer name (default: encoder.stem, the finest; docs/attention.md)")
    p.add_argument("--method", choices=METHODS,
                   help="hirescam (default; docs/attention.md has the measurements that chose it), gradcam, "
                        "guided_gradcam, integrated_gradients or occlusion (all captum)")
    p.add_argument("--evidence", choices=EVIDENCE,
                   help="positive (default): where the input raises the target; negative: where it lowers it, e.g. "
                        "dark CSF for a ventricle volume; absolute: both (files get a _negative / _absolute suffix)")
    p.add_argument("--baseline", choices=BASELINES,
                   help="integrated_gradients / occlusion reference: zeros, blurred (default) or masked (the body "
                        "set to its mean intensity)")
    p.add_argument("--patch-mm", type=float, help="occlusion cube edge in mm (default 16)")
    p.add_argument("--mask", help=MASK_HELP + "; with --manifest, its 'mask' column")
    p.add_argument("-o", "--output", required=True, help="folder for the maps (one subfolder per subject with --manifest)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_attention)

    p = commands.add_parser("report", help="per subject an offline HTML report (maps, attributes, traversals) "
                            "with the maps as NIfTI and a 3D Slicer segmentation beside it")
    p.add_argument("run", help=RUN_HELP + "; an Attri-VAE run")
    p.add_argument("input", nargs="?", help=INPUT_HELP + " (or --manifest)")
    p.add_argument("--manifest", help=MANIFEST_HELP + "; one volume in memory at a time")
    p.add_argument("--mask", help=MASK_HELP + "; with --manifest, its 'mask' column")
    p.add_argument("--labels", help="a label map on the scan's grid (e.g. its DLMUSE segmentation), to name the "
                   "structure each map's peak falls in; with --manifest, the column holding each subject's label map")
    p.add_argument("--label-names", help="CSV with Index and Name columns naming the labels (e.g. "
                   "muse_roi_dictionary.csv)")
    p.add_argument("-o", "--output", required=True, help="folder for index.html and one subfolder per subject")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_report)

    p = commands.add_parser("train-prior", help="train an autoregressive prior over a VQ-VAE run's codes")
    p.add_argument("run", help=RUN_HELP + "; a VQ-VAE run")
    p.add_argument("--prior", default="transformer", choices=PRIORS,
                   help="the kind of prior (default transformer); each kind is kept in RUN/prior/<kind>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a prior.* or train.* key")
    p.add_argument("--resume", action="store_true", help="continue the prior of this kind; --set may change train.* only")
    p.set_defaults(func=_train_prior)

    p = commands.add_parser("sample", help="sample new volumes from a run's prior")
    p.add_argument("run", help=RUN_HELP + "; a VQ-VAE run with a trained prior")
    p.add_argument("-n", type=int, default=8, help="number of volumes (default 8)")
    p.add_argument("--prior", choices=PRIORS, help="which prior (default: the only or the latest trained)")
    p.add_argument("--label", help="sample this class (conditional priors; default: drawn from the training frequencies)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely codes only")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("-o", "--output", required=True, help="folder for sample_XXX.nii.gz, samples.png and samples.json")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
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
