"""One step of the trainer-vs-nnU-Net benchmark in its own process, with torch's CPU threads set to ``--threads``.

- ``nnunet-train``: nnU-Net v2's fingerprint, default plan (3d_fullres) and preprocessing, then its stock
  ``nnUNetTrainer`` (fold ``all``: every training case, as unetseg trains with ``--val-fraction 0``) driven through
  its own hooks by `train_within_budget`, which stops between iterations once the budget is spent and saves
  ``checkpoint_final.pth`` as nnU-Net does at the end of a run. Augmentation runs in this process
  (``nnUNet_n_proc_DA=0``), on the same threads. Writes its figures to ``--summary``.
- ``nnunet-predict``: ``nnUNetPredictor``, the class behind ``nnUNetv2_predict``, with its defaults (Gaussian
  tiles at step 0.5, mirroring TTA) on its sequential path (``-npp 0 -nps 0``); the command line itself would set
  torch's threads to every core.
- ``unetseg``: the ``unetseg`` command line with the arguments after ``--``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unetseg.cli import main as unetseg_main

TRAINER, PLANS, CONFIGURATION, FOLD = "nnUNetTrainer", "nnUNetPlans", "3d_fullres", "all"
POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler


def train_within_budget(trainer, budget_s: float) -> dict:
    """nnU-Net's ``run_training`` loop, stopped between iterations when ``budget_s`` is spent (at least one iteration
    per epoch). Its per-epoch poly learning rate is applied per iteration over the budget's elapsed fraction: the
    schedule nnU-Net would follow had its epoch count been cut to fit the budget. The clock starts after
    ``on_train_start`` (network, data loaders), as unetseg's starts after its setup."""
    trainer.on_train_start()
    start = time.perf_counter()
    iterations = 0

    def spent() -> float:
        return (time.perf_counter() - start) / budget_s

    while spent() < 1 and trainer.current_epoch < trainer.num_epochs:
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outputs = []
        for _ in range(trainer.num_iterations_per_epoch):
            if outputs and spent() >= 1:
                break
            for group in trainer.optimizer.param_groups:
                group["lr"] = trainer.initial_lr * (1 - min(spent(), 1.0)) ** POLY_EXPONENT
            outputs.append(trainer.train_step(next(trainer.dataloader_train)))
        iterations += len(outputs)
        trainer.on_train_epoch_end(outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            val = [trainer.validation_step(next(trainer.dataloader_val))
                   for _ in range(trainer.num_val_iterations_per_epoch)]
            trainer.on_validation_epoch_end(val)
        trainer.on_epoch_end()
    seconds = time.perf_counter() - start
    trainer.on_train_end()  # checkpoint_final.pth
    return {"iterations": iterations, "epochs": trainer.current_epoch, "train_s": round(seconds, 1)}


def nnunet_train(dataset_id: int, minutes: float, threads: int, iterations_per_epoch: int, summary: Path) -> None:
    """Plan, preprocess and train nnU-Net within the budget; write the figures to ``summary``."""
    # the planner sets torch's threads to nnUNet_n_proc_DA while it sizes networks: our thread count there
    os.environ["nnUNet_n_proc_DA"] = str(threads)  # noqa: SIM112 (nnU-Net's name)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    start = time.perf_counter()
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], PLANS, configurations=[CONFIGURATION], num_processes=[1], verbose=False)
    prepared_s = time.perf_counter() - start
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 augmentation in this process, on these threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    trainer = get_trainer_from_args(str(dataset_id), CONFIGURATION, FOLD, TRAINER, PLANS, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = iterations_per_epoch
    trainer.num_val_iterations_per_epoch = 1  # its pseudo-Dice on training patches (fold all): kept minimal
    figures = train_within_budget(trainer, minutes * 60.0)
    config = trainer.configuration_manager
    figures.update(preprocess_s=round(prepared_s, 1), patch_size=list(config.patch_size),
                   batch_size=config.batch_size, spacing=list(config.spacing), threads=torch.get_num_threads(),
                   model=str(Path(trainer.output_folder).parent))
    summary.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def nnunet_predict(model: Path, images: Path, out: Path, threads: int, tta: bool = True) -> None:
    """Predict every case in ``images`` with nnU-Net's predictor and its default settings (``tta=False``: its
    ``--disable_tta``)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(threads)
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=tta, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (FOLD,), "checkpoint_final.pth")
    predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=False, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True)
    sub = parser.add_subparsers(dest="step", required=True)
    train = sub.add_parser("nnunet-train")
    train.add_argument("--dataset-id", type=int, required=True)
    train.add_argument("--minutes", type=float, required=True)
    train.add_argument("--iterations-per-epoch", type=int, required=True)
    train.add_argument("--summary", type=Path, required=True)
    predict = sub.add_parser("nnunet-predict")
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("--images", type=Path, required=True)
    predict.add_argument("--out", type=Path, required=True)
    predict.add_argument("--no-tta", action="store_true")
    ours = sub.add_parser("unetseg")
    ours.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.step == "nnunet-train":
        nnunet_train(args.dataset_id, args.minutes, args.threads, args.iterations_per_epoch, args.summary)
    elif args.step == "nnunet-predict":
        nnunet_predict(args.model, args.images, args.out, args.threads, not args.no_tta)
    else:
        torch.set_num_threads(args.threads)
        return unetseg_main(args.args[1:] if args.args[:1] == ["--"] else args.args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
