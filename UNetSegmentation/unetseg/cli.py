"""The `unetseg` command line: argument parsing only; `unetseg.jobs.runner` runs the command.

Subcommands register themselves in `_SUBCOMMANDS` through a small `_add_<name>` function that declares the
arguments and names the job ("module:function" under `unetseg.jobs`). The runner imports the job only when it
runs, so `unetseg --help` stays instant; it owns the exit codes, the cancel signals and the progress protocol.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from unetseg import __version__
from unetseg.jobs.runner import EXIT_OK, exit_code_table, run_job
from unetseg.lean_imports import keep_matplotlib_out_of_monai
from unetseg.vocabulary import (
    AUGMENTATION_TITLES,
    AUGMENTATIONS,
    BACKENDS,
    DEFAULT_AUGMENTATIONS,
    DEFAULT_MAX_WINDOWS,
    DEFAULT_TRAINING_VARIANT,
    DEVICES,
    IMPORTED_VARIANTS,
    MODALITIES,
    PRECISIONS,
    VARIANTS,
)

# Parser options that choose the job and its reporting rather than being passed to it.
_RUNNER_KEYS = ("command", "job", "models_command", "progress")


def _job_parser(sub: argparse._SubParsersAction, name: str, job: str, help: str) -> argparse.ArgumentParser:
    """A subcommand running ``job``, with the ``--progress`` option every command shares."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--progress", choices=["text", "json"], default="text",
                   help="json: progress, messages, errors and the result as JSON lines on stdout; text: readable")
    p.set_defaults(job=job)
    return p


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "demo", "demo:run", "segment the bundled sample with the bundled default model")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "plan", "plan:run",
                    "fingerprint a training dataset and write nnU-Net-style plans (plans.json)")
    p.add_argument("dataset", help="nnU-Net or MSD dataset folder, or a JSON/CSV list of image/label pairs")
    p.add_argument("--gpu-memory-gb", type=float, default=8.0, help="training GPU memory budget (default: 8)")
    p.add_argument("--out", default=None, help="plans file (default: DATASET/plans.json)")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "models", "models:run_list",
                    "list the model catalog (bundled and user models), or import a model")
    p.add_argument("--modality", type=str.upper, choices=MODALITIES, help="only models for this modality")
    p.add_argument("--variant", choices=VARIANTS + IMPORTED_VARIANTS, help="only models of this network variant")
    p.add_argument("--details", action="store_true", help="inputs, labels, preprocessing and provenance")
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")
    imp = _job_parser(actions, "import", "models:run_import",
                      "validate a model (zip or folder) and copy it to the user models; an nnU-Net v2 model or a "
                      "MONAI bundle is converted to a package")
    imp.add_argument("path", help="model package (folder holding model.json, or its .zip), nnU-Net v2 trained-model "
                                  "folder or zip, or MONAI bundle folder or zip")
    imp.add_argument("--replace", action="store_true", help="replace a model of the same name")
    imp.add_argument("--name", help="catalog name of a converted model (default: dataset and configuration)")
    imp.add_argument("--folds", nargs="+", metavar="F",
                     help="nnU-Net folds to ensemble (0 1 … or all; default: every fold_* with the checkpoint)")
    imp.add_argument("--checkpoint", metavar="FILE",
                     help="nnU-Net checkpoint file name (default: checkpoint_final.pth)")
    imp.add_argument("--configuration", help="nnU-Net configuration (e.g. 3d_fullres) when PATH holds several")
    imp.add_argument("--modality", type=str.upper, choices=MODALITIES,
                     help="a MONAI bundle's modality, when its metadata.json does not name one")
    check = _job_parser(actions, "validate-precision", "models:run_validate_precision",
                        "run a few windows of the model's sample in fp32 and in bf16, fp16 and int8, and record the "
                        "label agreement in its manifest (--precision auto uses only the validated ones; a model "
                        "that mirrors by default has a refused precision judged again on its TTA mean, with --image)")
    check.add_argument("model", help="catalog name or model folder")
    check.add_argument("--windows", type=int, default=3, metavar="N", help="windows to compare (default: 3)")
    check.add_argument("--image", action="append", dest="images", metavar="IMAGE",
                       help="a case of your own to cut the windows from (repeat once per input, in the model's "
                            "input order; default: the model's bundled sample, else a synthetic phantom)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "predict", "predict:run",
                    "segment an image (or one image per MRI sequence), or a cohort of cases, with a model")
    p.add_argument("-i", "--input", action="append", required=True, metavar="IMAGE",
                   help="image file (NRRD, NIfTI, MHA…) or DICOM series folder; repeat once per input, in the "
                        "model's input order. A cohort: one folder of cases (image files, DICOM series "
                        "sub-folders), a quoted glob, or a CSV/TSV list (header row; case id, one column per "
                        "input, optional 'output')")  # fmt: skip
    p.add_argument("-m", "--model", required=True, help="catalog name, model folder or model zip")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .seg.nrrd (Slicer segmentation), .nii.gz/.nii/.nrrd/.mha (label map) or .dcm "
                        "(DICOM SEG of a DICOM series input); for a cohort, the output folder (OUT_DIR)")  # fmt: skip
    p.add_argument("--format", metavar="FORMAT",
                   help="output format: seg.nrrd (a cohort's default), nii.gz, nii, nrrd, mha or dicom-seg")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="compute device (default: auto = CUDA, then Apple MPS, then CPU)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_const", const=True, default=None,
                     help="mirror test-time augmentation (slower; default: as the model's manifest says)")
    tta.add_argument("--no-tta", dest="tta", action="store_const", const=False,
                     help="no test-time augmentation, even where the model's manifest turns it on")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_const", const=False, default=None,
                   help="skip the model's post-processing (largest component, hole filling, islands)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (default; ONNX Runtime is used anyway when torch is not installed), onnx (ONNX "
                        "Runtime; its onnxruntime-openvino build runs OpenVINO's kernels on the CPU) or openvino (pip "
                        "install openvino; CPU), the last two on the model's ONNX export; "
                        "auto: the fastest installed (torch on a GPU; on the CPU OpenVINO, then ONNX Runtime, where "
                        "the model has an ONNX export)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="numeric precision of the windows (default: auto = the fastest this device computes natively "
                        "that the model is validated for; int8: --backend onnx or openvino)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="refuse an input whose network grid needs more memory (default: 3/4 of this machine's)")
    p.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS, metavar="N",
                   help=f"refuse an input that needs more sliding windows (default: {DEFAULT_MAX_WINDOWS})")
    cohort = p.add_argument_group(
        "cohorts", "a rerun skips cases whose output is complete (the run log OUT_DIR/unetseg-run.jsonl says so); "
                   "a failed case is recorded and the others go on (exit code 4)")  # fmt: skip
    cohort.add_argument("--workers", type=int, metavar="N",
                        help="worker processes, each loading the model once (default: 1, in this process; the "
                             "CPU threads are divided between them); with --ray: at most N actors")  # fmt: skip
    cohort.add_argument("--devices", metavar="GPUS", help="GPUs to use, one worker each, e.g. 0,1")
    cohort.add_argument("--overwrite", action="store_true", help="segment complete cases again, replacing outputs")
    cohort.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                        help="run on a Ray cluster (pip install 'unetseg[cluster]'): auto (the cluster `ray start` "
                             "joined; the default), ray://HOST:10001, or local (a private instance here)")  # fmt: skip
    cohort.add_argument("--cpus-per-worker", type=int, metavar="N",
                        help="with --ray on CPU nodes: CPUs (and torch threads) per actor (default: 4)")


def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "export-onnx", "models:run_export_onnx",
                    "export a model's network to ONNX (model.onnx next to its weights)")
    p.add_argument("model", help="catalog name, model folder or model zip")


def augment_switch(text: str) -> tuple[str, bool]:
    """``NAME=on`` or ``NAME=off`` (also true/false, yes/no, 1/0) as ``(name, on)``, for ``--augment``."""
    name, _, value = text.partition("=")
    states = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if name not in AUGMENTATIONS or value.lower() not in states:
        raise argparse.ArgumentTypeError(f"expected NAME=on or NAME=off with NAME one of {', '.join(AUGMENTATIONS)}; "
                                         f"got {text!r}")
    return name, states[value.lower()]

def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "train", "train:run",
                    "train (or fine-tune) a model on a dataset; the result is a model package")
    p.add_argument("dataset", help="nnU-Net or MSD dataset folder, or a JSON/CSV list of image/label pairs")
    p.add_argument("--out", required=True, metavar="MODEL_DIR",
                   help="output folder for the model package and checkpoints: new or empty (see --resume, --overwrite)")
    p.add_argument("--variant", choices=VARIANTS, default=DEFAULT_TRAINING_VARIANT)
    p.add_argument("--plans", help="plans file from `unetseg plan` (default: DATASET/plans.json, else planned now)")
    p.add_argument("--configuration", choices=["2d", "3d_fullres"], help="plan configuration (default: 3D for volumes)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the plan's 1000, or until --time-budget)")
    p.add_argument("--time-budget", dest="time_budget_min", type=float, metavar="MINUTES",
                   help="stop after this many minutes of training (the learning rate decays over the budget)")
    p.add_argument("--iterations-per-epoch", type=int, help="optimiser steps per epoch (default: 250)")
    p.add_argument("--val-every", type=int, help="validate every N epochs (default: 1)")
    p.add_argument("--val-fraction", type=float, help="share of cases held out for validation (default: 0.2)")
    p.add_argument("--val-cases", nargs="+", metavar="CASE", help="validate on these cases instead")
    p.add_argument("--batch-size", type=int, help="patches per step (default: the plan's)")
    p.add_argument("--patch-size", type=int, nargs="+", help="patch size z y x (or y x) (default: the plan's)")
    p.add_argument("--loss", choices=["dice_ce", "dice_focal", "focal", "dice"], default="dice_ce")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", dest="learning_rate", type=float, help="initial learning rate (SGD 1e-2, AdamW 1e-3)")
    p.add_argument("--width", type=float, help="feature-count multiplier (default: the plan's; 0.5 GPU / 0.25 CPU "
                                               "for the other variants)")
    p.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_const", const=False)
    p.add_argument("--mirror-axes", type=int, nargs="*", help="patch axes to mirror (default: all but left-right "
                                                              "when labels name a side)")
    switches = p.add_argument_group(
        "augmentation", "The plan records which augmentations a run uses (default: per modality, below; a plans "
                        "file may set them); --augment switches some on or off, e.g. --augment inversion=off "
                        "elastic=on. " + "; ".join(f"{name}: {title}" for name, title in AUGMENTATION_TITLES.items())
                        + ". On by default: " + "; ".join(f"{modality} {', '.join(names)}"
                                                          for modality, names in DEFAULT_AUGMENTATIONS.items()))
    switches.add_argument("--augment", nargs="+", action="extend", type=augment_switch, metavar="NAME=on|off",
                          help="switch augmentations on or off (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on CUDA")
    p.add_argument("--workers", dest="num_workers", type=int, help="data-loading worker processes (default: 0)")
    p.add_argument("--gpu-memory-gb", type=float, help="memory budget when planning now (default: 8)")
    p.add_argument("--name", help="model name (default: the dataset's name or the output folder's)")
    p.add_argument("--description", help="model description for the catalog")
    p.add_argument("--modality", type=str.upper, choices=MODALITIES, help="default: from the dataset")
    p.add_argument("--half", action="store_const", const=True, help="store the weights in half precision")
    p.add_argument("--init", metavar="MODEL", help="fine-tune from this model (catalog name, folder or zip)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="train into a non-empty --out anyway: its model package and earlier run are replaced")
    p.add_argument("--cache-dir", help="preprocessed-case cache (default: ~/.cache/unetseg/preprocessed)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _job_parser(sub, "evaluate", "evaluate:run",
                    "compare predicted label maps with references: Dice, IoU, HD95, ASSD")
    p.add_argument("pred_dir", help="folder of predicted label maps (.nii.gz, .nrrd, .seg.nrrd, .mha …)")
    p.add_argument("ref_dir", help="folder of reference label maps with the same case names")
    p.add_argument("--out", default=None, metavar="CSV", help="per-case, per-class CSV (default: PRED_DIR/metrics.csv)")


# Each entry adds one subcommand's parser; keep them in the order `--help` should list them.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_plan, _add_models, _add_predict, _add_export_onnx, _add_train, _add_evaluate,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand; the exit codes are its epilog."""
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="U-Net family segmentation of CT, MRI and X-ray images (the UNetSegmentation core).",
        epilog=f"exit codes:\n{exit_code_table()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unetseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `unetseg` and `python -m unetseg`; returns the exit code (see `jobs.runner.EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # a wrong command line exits with EXIT_USAGE (argparse's 2)
    if getattr(args, "job", None) is None:
        parser.print_help()
        return EXIT_OK
    keep_matplotlib_out_of_monai()  # MONAI's import would load matplotlib (0.4 s) for nothing
    options = {k: v for k, v in vars(args).items() if k not in _RUNNER_KEYS}
    argv_list = list(sys.argv[1:] if argv is None else argv)  # for provenance (the training command)
    command = " ".join(filter(None, (args.command, getattr(args, "models_command", None))))
    return run_job(command, args.job, options, argv_list, json_progress=args.progress == "json")


if __name__ == "__main__":
    sys.exit(main())
