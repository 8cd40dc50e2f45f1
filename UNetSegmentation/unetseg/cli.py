"""The `unetseg` command line: argument parsing only; each subcommand calls one function of the core.

Subcommands register themselves in `_SUBCOMMANDS` through a small `_add_<name>` function that declares the
arguments and the handler. Heavy imports happen inside handlers so `unetseg --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from unetseg import __version__

Handler = Callable[[argparse.Namespace], int]


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample with the bundled default model")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from unetseg.demo import run_demo

    return run_demo(args.out)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="fingerprint a training dataset and write nnU-Net-style plans (plans.json)")
    p.add_argument("dataset", help="nnU-Net or MSD dataset folder, or a JSON/CSV list of image/label pairs")
    p.add_argument("--gpu-memory-gb", type=float, default=8.0, help="training GPU memory budget (default: 8)")
    p.add_argument("--out", default=None, help="plans file (default: DATASET/plans.json)")
    p.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from unetseg.jobs.plan import run_plan  # lazy: numpy, SimpleITK

    return run_plan(args.dataset, args.gpu_memory_gb, args.out)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model catalog (bundled and user models), or import a model")
    p.add_argument("--modality", type=str.upper, choices=["CT", "MR", "XR"], help="only models for this modality")
    p.add_argument("--variant", help="only models of this network variant (e.g. unet, nnunet)")
    p.add_argument("--details", action="store_true", help="inputs, labels, preprocessing and provenance")
    p.set_defaults(handler=_run_models)
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")
    imp = actions.add_parser("import", help="validate a model (zip or folder) and copy it to the user models")
    imp.add_argument("path", help="model .zip or folder holding model.json and its weights")
    imp.add_argument("--replace", action="store_true", help="replace a model of the same name")
    imp.set_defaults(handler=_run_models_import)


def _run_models(args: argparse.Namespace) -> int:
    from unetseg.jobs.models import run_list  # lazy: keeps --help instant

    return run_list(args.modality, args.variant, args.details)


def _run_models_import(args: argparse.Namespace) -> int:
    from unetseg.jobs.models import run_import  # lazy: keeps --help instant

    return run_import(args.path, args.replace)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment an image (or one image per MRI sequence) with a model")
    p.add_argument("-i", "--input", action="append", required=True, metavar="IMAGE",
                   help="image file (NRRD, NIfTI, MHA…) or DICOM series folder; repeat once per input, in the "
                        "model's input order")  # fmt: skip
    p.add_argument("-m", "--model", required=True, help="catalog name, model folder or model zip")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .seg.nrrd (Slicer segmentation) or .nii.gz/.nii/.nrrd/.mha (label map)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="compute device (default: auto = CUDA, then Apple MPS, then CPU)")  # fmt: skip
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_const", const=True, default=None,
                     help="mirror test-time augmentation (slower; default: as the model's manifest says)")
    tta.add_argument("--no-tta", dest="tta", action="store_const", const=False,
                     help="no test-time augmentation, even where the model's manifest turns it on")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_const", const=False, default=None,
                   help="skip the model's post-processing (largest component, hole filling, islands)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (default; ONNX Runtime is used anyway when torch is not installed) or onnx")
    p.add_argument("--progress", choices=["json"], default=None,
                   help="print progress, messages, errors and the result as JSON lines on stdout")
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from unetseg.jobs.predict import run_predict

    return run_predict(args.input, args.model, args.output, args.device, args.tta, args.postprocess,
                       args.backend, args.progress == "json")  # fmt: skip


def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export a model's network to ONNX (model.onnx next to its weights)")
    p.add_argument("model", help="catalog name, model folder or model zip")
    p.set_defaults(handler=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    from unetseg.jobs.models import run_export_onnx  # lazy: keeps --help instant

    return run_export_onnx(args.model)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or fine-tune) a model on a dataset; the result is a model package")
    p.add_argument("dataset", help="nnU-Net or MSD dataset folder, or a JSON/CSV list of image/label pairs")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="output folder: the model package and checkpoints")
    p.add_argument("--variant", choices=["nnunet", "unet", "vnet", "unetpp", "attention_unet"], default="nnunet")
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
    p.add_argument("--elastic", action="store_const", const=True, help="add elastic deformation to augmentation")
    p.add_argument("--mirror-axes", type=int, nargs="*", help="patch axes to mirror (default: all but left-right "
                                                              "when labels name a side)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on CUDA")
    p.add_argument("--workers", dest="num_workers", type=int, help="data-loading worker processes (default: 0)")
    p.add_argument("--gpu-memory-gb", type=float, help="memory budget when planning now (default: 8)")
    p.add_argument("--name", help="model name (default: the dataset's name or the output folder's)")
    p.add_argument("--description", help="model description for the catalog")
    p.add_argument("--modality", type=str.upper, choices=["CT", "MR", "XR"], help="default: from the dataset")
    p.add_argument("--half", action="store_const", const=True, help="store the weights in half precision")
    p.add_argument("--init", metavar="MODEL", help="fine-tune from this model (catalog name, folder or zip)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--cache-dir", help="preprocessed-case cache (default: ~/.cache/unetseg/preprocessed)")
    p.add_argument("--progress", choices=["json", "text"], default="text",
                   help="json: one JSON object per line (epoch, losses, validation Dice, ETA); text: readable lines")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from unetseg.jobs.train import run_train_command  # lazy: torch

    return run_train_command(vars(args), args.argv)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare predicted label maps with references: Dice, IoU, HD95, ASSD")
    p.add_argument("pred_dir", help="folder of predicted label maps (.nii.gz, .nrrd, .seg.nrrd, .mha …)")
    p.add_argument("ref_dir", help="folder of reference label maps with the same case names")
    p.add_argument("--out", default=None, metavar="CSV", help="per-case, per-class CSV (default: PRED_DIR/metrics.csv)")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from unetseg.jobs.evaluate import run_evaluate  # lazy: numpy, SimpleITK

    return run_evaluate(args.pred_dir, args.ref_dir, args.out)


# Each entry adds one subcommand's parser; keep them in the order `--help` should list them.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_plan, _add_models, _add_predict, _add_export_onnx, _add_train, _add_evaluate,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="U-Net family segmentation of CT, MRI and X-ray images (the UNetSegmentation core).",
    )
    parser.add_argument("--version", action="version", version=f"unetseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `unetseg` and `python -m unetseg`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for provenance (the training command)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
