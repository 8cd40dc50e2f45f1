"""Make tiny, really trained nnU-Net v2 model folders and their reference predictions (issue 13 parity fixtures).

Run with an interpreter that has the real ``nnunetv2`` installed (a test/benchmark extra only; see the install
steps below). Everything is made here from synthetic data, so nothing is downloaded:

    python benchmarks/make_nnunet_fixtures.py --out /tmp/nnunet-fixtures [--models ct3d ct2d mr regions]

For each model this script does what a user does with nnU-Net — writes a raw dataset (``dataset.json``,
``imagesTr``, ``labelsTr``), extracts the fingerprint, plans, **shrinks the planned network in ``plans.json``**
(fewer stages and features, a small patch) so that it trains in seconds on a CPU, preprocesses, and trains the real
``nnUNetTrainer`` class for a handful of iterations (the trainer's own ``num_epochs`` /
``num_iterations_per_epoch`` attributes are lowered on the instance; the checkpoint therefore names the stock
trainer ``nnUNetTrainer``, exactly as a full-length run would). Then it predicts a few unseen images with the
``nnUNetv2_predict`` command, with and without ``--disable_tta``, and keeps those outputs (segmentations and the
exported probabilities) as the parity references.

Models (all small enough to check in):

===========  ====================================================================================================
``ct3d``     Dataset901_TinyCT, ``3d_fullres``, folds 0 and 1. One ``CT`` channel (CTNormalization), labels
             background/organ/bone, anisotropic spacing along the file's x axis (so ``transpose_forward`` is not
             the identity and the separate-axis resampling rule applies), spacing varies per case.
``ct2d``     Dataset901_TinyCT, ``2d``, fold 0 (the same raw data, nnU-Net's 2d configuration).
``mr``       Dataset902_TinyMR, ``3d_fullres``, fold 0. Two channels ``T1``/``T2`` (ZScoreNormalization, masked:
             the head is surrounded by zeros so ``use_mask_for_norm`` is planned true), crop-to-non-zero matters,
             and the architecture is switched to ``ResidualEncoderUNet`` (what nnU-Net's ResEnc presets plan).
``regions``  Dataset903_TinyRegions, ``3d_fullres``, fold ``all``. Region-based labels (``whole`` = [1, 2],
             ``core`` = 2, ``regions_class_order`` [1, 2]), one ``rescale_to_0_1`` channel.
===========  ====================================================================================================

Output layout under ``--out``::

    models/<Dataset>/<trainer>__<plans>__<configuration>/   dataset.json, plans.json, fold_*/checkpoint_final.pth
    cases/<Dataset>/imagesTs/<case>_000X.nii.gz             unseen test images
    cases/<Dataset>/labelsTs/<case>.nii.gz                  their ground truth (for sanity Dice only)
    reference/<model>/{tta,notta}/<case>.nii.gz (+ .npz)     nnUNetv2_predict's outputs
    exports/<Dataset>__<model folder>.zip                   nnUNetv2_export_model_to_zip of the --export models
    manifest.json                                           versions, commands, timings, sizes, sanity Dice

Installing nnU-Net for this without replacing the CPU torch (nnunetv2 pulls timm -> torchvision, whose wheels
are CUDA builds; nnU-Net's planner, preprocessor, trainer and predictor never import timm)::

    python -m venv ENV && ENV/bin/pip install torch==2.13.0            # the CPU build
    echo torch==2.13.0 > torch-constraint.txt
    ENV/bin/pip install -c torch-constraint.txt acvl-utils>=0.2.6,<0.3 tqdm scipy batchgenerators>=0.25.1 \\
        numpy>=1.24 scikit-learn scikit-image>=0.19.3 SimpleITK>=2.2.1 pandas graphviz tifffile requests \\
        nibabel matplotlib seaborn imagecodecs yacs batchgeneratorsv2>=0.3.2 einops blosc2>=3.3.2
    ENV/bin/pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "Testing" / "fixtures" / "nnunet"

TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"


# ----------------------------------------------------------------------------------------------------------------
# Synthetic data (numpy + SimpleITK only; deterministic per seed)
# ----------------------------------------------------------------------------------------------------------------

def _grid(shape_zyx, spacing_xyz):
    """Physical coordinates (mm) of voxel centres, centred on the volume, as z, y, x arrays."""
    sz, sy, sx = (np.arange(n) for n in shape_zyx)
    z, y, x = np.meshgrid(sz, sy, sx, indexing="ij")
    cz, cy, cx = ((n - 1) / 2 for n in shape_zyx)
    return (z - cz) * spacing_xyz[2], (y - cy) * spacing_xyz[1], (x - cx) * spacing_xyz[0]


def _ellipsoid(coords, centre, radii):
    z, y, x = coords
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + \
        ((x - centre[2]) / radii[2]) ** 2 <= 1.0


def _write(array_zyx, spacing_xyz, path: Path, dtype) -> None:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx.astype(dtype)))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin((float(-spacing_xyz[0]), 2.0, -3.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def make_ct_case(rng: np.random.RandomState, test: bool = False):
    """A body ellipsoid in air, an 'organ' sphere (label 1) and a 'bone' box (label 2); coarse along file x."""
    spacing = (rng.uniform(3.4, 4.4), rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1))   # x, y, z (mm)
    extent = np.array([rng.uniform(36, 44), rng.uniform(36, 44), rng.uniform(44, 52)])   # z, y, x (mm)
    if test:
        extent *= 1.15
    shape = tuple(round(e / s) for e, s in zip(extent, spacing[::-1], strict=True))
    c = _grid(shape, spacing)
    body = _ellipsoid(c, (0, 0, 0), extent / 2 * 0.9)
    organ_c = rng.uniform(-5, 5, 3)
    organ = _ellipsoid(c, organ_c, np.array([9, 9, 10]) * rng.uniform(0.8, 1.2))
    bz, by, bx = c
    b0 = rng.uniform(-4, 4, 3) + np.array([0, 9, -8])
    bone = (np.abs(bz - b0[0]) < 8) & (np.abs(by - b0[1]) < 3) & (np.abs(bx - b0[2]) < 4)
    image = np.full(shape, -1000.0)
    image[body] = 20.0
    # the organ brightens from 150 to 300 HU along z: CT normalisation clips at the foreground's 0.5th percentile,
    # so a uniform organ would keep only ~2.6 noise sigmas of contrast against the (clipped) body
    ramp = 150.0 + 150.0 * np.clip((bz - organ_c[0]) / 20.0 + 0.5, 0.0, 1.0)
    image[organ & body] = ramp[organ & body]
    image[bone & body] = 600.0
    image += rng.normal(0, 25, shape)
    label = np.zeros(shape, np.uint8)
    label[organ & body] = 1
    label[bone & body] = 2
    return [image], label, spacing


def make_mr_case(rng: np.random.RandomState, test: bool = False):
    """A head ellipsoid in exact zeros (so crop-to-non-zero and masked z-score apply); the lesion (label 1) is
    bright in T2 and dark in T1, a decoy blob is bright in T2 only — both channels are needed."""
    s = rng.uniform(1.1, 1.4)
    spacing = (s * rng.uniform(0.95, 1.05), s * rng.uniform(0.95, 1.05), s * rng.uniform(1.0, 1.2))
    n = rng.randint(38, 46) if not test else rng.randint(44, 50)
    shape = (n - 4, n, n + 2)
    c = _grid(shape, spacing)
    radii = np.array(shape) * np.array(spacing[::-1]) / 2 * 0.55
    head = _ellipsoid(c, rng.uniform(-2, 2, 3), radii)
    lesion = _ellipsoid(c, rng.uniform(-4, 4, 3), np.full(3, rng.uniform(5, 8))) & head
    decoy_c = rng.uniform(-4, 4, 3) + np.array([0, 0, 10])
    decoy = _ellipsoid(c, decoy_c, np.full(3, 4.5)) & head & ~lesion
    gain = rng.uniform(0.7, 1.5)    # arbitrary MR scale: the per-image z-score removes it
    t1 = np.where(head, 400.0, 0.0)
    t2 = np.where(head, 300.0, 0.0)
    t1[lesion] = 180.0
    t2[lesion] = 650.0
    t2[decoy] = 650.0
    t1 = np.where(head, (t1 + rng.normal(0, 30, shape)) * gain, 0.0)
    t2 = np.where(head, (t2 + rng.normal(0, 30, shape)) * gain, 0.0)
    label = lesion.astype(np.uint8)
    return [t1, t2], label, spacing


def make_region_case(rng: np.random.RandomState, test: bool = False):
    """Nested structures: label 1 (outer shell) around label 2 (core); regions whole = {1, 2}, core = {2}."""
    s = rng.uniform(0.9, 1.1)
    spacing = (s, s * rng.uniform(0.95, 1.05), s * rng.uniform(1.4, 1.8))
    n = rng.randint(34, 40) if not test else rng.randint(40, 46)
    shape = (max(20, int(n / 1.6)), n, n)
    c = _grid(shape, spacing)
    centre = rng.uniform(-3, 3, 3)
    outer = _ellipsoid(c, centre, np.full(3, rng.uniform(9, 12)))
    core = _ellipsoid(c, centre + rng.uniform(-2, 2, 3), np.full(3, rng.uniform(4, 6)))
    image = np.full(shape, 30.0)
    image[outer] = 120.0
    image[core] = 200.0
    image += rng.normal(0, 12, shape)
    label = np.zeros(shape, np.uint8)
    label[outer] = 1
    label[core] = 2
    return [image], label, spacing


DATASETS = {
    901: dict(name="Dataset901_TinyCT", make=make_ct_case, channels={"0": "CT"},
              labels={"background": 0, "organ": 1, "bone": 2}),
    902: dict(name="Dataset902_TinyMR", make=make_mr_case, channels={"0": "T1", "1": "T2"},
              labels={"background": 0, "lesion": 1}),
    903: dict(name="Dataset903_TinyRegions", make=make_region_case, channels={"0": "rescale_to_0_1"},
              labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2]),
}

# model key -> dataset id, configuration, folds, architecture edit
MODELS = {
    "ct3d": dict(dataset=901, configuration="3d_fullres", folds=[0, 1], arch="plain"),
    "ct2d": dict(dataset=901, configuration="2d", folds=[0], arch="plain"),
    "mr": dict(dataset=902, configuration="3d_fullres", folds=[0], arch="resenc"),
    "regions": dict(dataset=903, configuration="3d_fullres", folds=["all"], arch="plain"),
}

N_TRAIN, N_TEST = 10, 3


def write_raw_dataset(raw_root: Path, cases_root: Path, dataset_id: int, seed: int) -> None:
    spec = DATASETS[dataset_id]
    folder = raw_root / spec["name"]
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.RandomState(seed + dataset_id)
    for i in range(N_TRAIN):
        images, label, spacing = spec["make"](rng)
        for ch, image in enumerate(images):
            _write(image, spacing, folder / "imagesTr" / f"case{i:03d}_{ch:04d}.nii.gz", np.float32)
        _write(label, spacing, folder / "labelsTr" / f"case{i:03d}.nii.gz", np.uint8)
    test_folder = cases_root / spec["name"]
    if test_folder.exists():
        shutil.rmtree(test_folder)
    for i in range(N_TEST):
        images, label, spacing = spec["make"](rng, test=True)
        for ch, image in enumerate(images):
            _write(image, spacing, test_folder / "imagesTs" / f"test{i:03d}_{ch:04d}.nii.gz", np.float32)
        _write(label, spacing, test_folder / "labelsTs" / f"test{i:03d}.nii.gz", np.uint8)
    dataset_json = {"channel_names": spec["channels"], "labels": spec["labels"], "numTraining": N_TRAIN,
                    "file_ending": ".nii.gz", "name": spec["name"],
                    "description": "synthetic, made by benchmarks/make_nnunet_fixtures.py"}
    if "regions_class_order" in spec:
        dataset_json["regions_class_order"] = spec["regions_class_order"]
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Shrinking the planned network (an edit of plans.json, as nnU-Net's docs describe for custom plans)
# ----------------------------------------------------------------------------------------------------------------

def shrink_configuration(config: dict, arch: str) -> None:
    """Three stages (one or two poolings), 8/16/32 features, a patch that fits the tiny images."""
    dim = len(config["patch_size"])
    spacing = config["spacing"]
    # pool only along axes whose spacing is within 2x of the finest one (nnU-Net's own rule), at most twice
    finest = min(spacing)
    pool_ok = [s <= 2 * finest for s in spacing]
    strides = [[1] * dim]
    kernels = [[3 if ok else 1 for ok in pool_ok]]
    for _ in range(2):
        strides.append([2 if ok else 1 for ok in pool_ok])
        kernels.append([3] * dim)
    # 32 voxels along poolable axes (a multiple of the 2x2 pooling), at most the median image rounded up to 4
    median = config["median_image_size_in_voxels"]
    patch = [min(32 if ok else 16, max(8, int(np.ceil(m / 4) * 4))) for ok, m in zip(pool_ok, median, strict=True)]
    config["patch_size"] = patch
    config["batch_size"] = 2
    features = [8, 16, 32]
    kwargs = config["architecture"]["arch_kwargs"]
    kwargs["n_stages"] = 3
    kwargs["features_per_stage"] = features
    kwargs["kernel_sizes"] = kernels
    kwargs["strides"] = strides
    kwargs["n_conv_per_stage_decoder"] = [1, 1]
    if arch == "resenc":
        config["architecture"]["network_class_name"] = \
            "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kwargs.pop("n_conv_per_stage", None)
        kwargs["n_blocks_per_stage"] = [1, 2, 2]
    else:
        kwargs["n_conv_per_stage"] = [2, 2, 2]


def plan_and_preprocess(dataset_id: int, configurations: list[str], archs: dict[str, str], preprocessed: Path) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)
    plan_experiments([dataset_id])
    plans_file = preprocessed / DATASETS[dataset_id]["name"] / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    for name in list(plans["configurations"]):
        if name not in configurations:
            del plans["configurations"][name]   # drops 3d_lowres / cascade if the planner made them
    for name in configurations:
        shrink_configuration(plans["configurations"][name], archs[name])
    plans_file.write_text(json.dumps(plans, indent=4), encoding="utf-8")
    preprocess([dataset_id], PLANS, configurations=configurations, num_processes=[1] * len(configurations),
               verbose=False, show_progress_bar=False)
    return plans


def train(dataset_id: int, configuration: str, fold, epochs: int, iterations: int) -> float:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 (nnU-Net's name) augment in this process (the planner needs it unset: it sets threads)
    torch.manual_seed(1234 + (fold if isinstance(fold, int) else 7))
    np.random.seed(1234)
    trainer = get_trainer_from_args(DATASETS[dataset_id]["name"], configuration, fold, TRAINER, PLANS,
                                    device=torch.device("cpu"))
    # the stock trainer, run for a handful of iterations (attributes it reads when it initialises)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.save_every = 10 ** 6
    t0 = time.perf_counter()
    trainer.run_training()
    # what nnUNetv2_train does next (it writes fold_X/validation/summary.json, which the zip export needs)
    trainer.perform_actual_validation(False)
    return time.perf_counter() - t0


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels) -> dict:
    out = {}
    for lab in labels:
        p, r = pred == lab, ref == lab
        denom = p.sum() + r.sum()
        out[str(lab)] = 1.0 if denom == 0 else float(2 * (p & r).sum() / denom)
    return out


def predict_reference(dataset_name: str, configuration: str, folds, cases: Path, out: Path, tta: bool,
                      probabilities: bool, env: dict) -> tuple[list[str], float]:
    """``nnUNetv2_predict`` on the unseen cases (``-npp 0 -nps 0``: nnU-Net's sequential path, same results);
    keeps the segmentations, the ``.npz`` probabilities (if asked) and the argument record, drops the ``.pkl``
    property pickles and the copies of dataset.json / plans.json."""
    exe = Path(sys.executable).with_name("nnUNetv2_predict")
    cmd = [str(exe), "-i", str(cases), "-o", str(out), "-d", dataset_name, "-c", configuration, "-tr", TRAINER,
           "-p", PLANS, "-f", *[str(f) for f in folds], "-device", "cpu", "-npp", "0", "-nps", "0",
           "--disable_progress_bar"]
    if probabilities:
        cmd.append("--save_probabilities")
    if not tta:
        cmd.append("--disable_tta")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    for p in [*out.glob("*.pkl"), out / "dataset.json", out / "plans.json"]:
        p.unlink(missing_ok=True)
    return cmd, seconds


def export_zip(dataset_name: str, configuration: str, folds, target: Path, env: dict) -> list[str]:
    """``nnUNetv2_export_model_to_zip`` of one model (the zip a user downloads: Dataset level included)."""
    exe = Path(sys.executable).with_name("nnUNetv2_export_model_to_zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    cmd = [str(exe), "-d", dataset_name, "-o", str(target), "-c", configuration, "-tr", TRAINER, "-p", PLANS,
           "-f", *[str(f) for f in folds]]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return cmd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None,
                        help="nnUNet_raw/_preprocessed/_results live here (default: OUT/../nnunet-work)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=40, help="training iterations per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--no-probabilities", action="store_true",
                        help="keep only the reference segmentations (the .npz probabilities are ~3.7 MB in all)")
    parser.add_argument("--export", nargs="*", default=["ct2d"], choices=list(MODELS),
                        help="models also exported with nnUNetv2_export_model_to_zip into OUT/exports/")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    work = (args.work or out.parent / (out.name + "-work")).resolve()
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    for p in (raw, pre, res):
        p.mkdir(parents=True, exist_ok=True)
    # nnunetv2 reads these when it is imported
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
                      nnUNet_compile="false", nnUNet_def_n_proc="1")
    import nnunetv2
    import SimpleITK as sitk
    import torch

    manifest = {"nnunetv2": nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else _dist_version("nnunetv2"),
                "dynamic_network_architectures": _dist_version("dynamic_network_architectures"),
                "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                "epochs": args.epochs, "iterations_per_epoch": args.iterations, "seed": args.seed, "models": {}}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["models"].update({k: v for k, v in old.get("models", {}).items() if k not in args.models})

    wanted = [MODELS[m] for m in args.models]
    dataset_ids = sorted({m["dataset"] for m in wanted})
    for ds in dataset_ids:
        t0 = time.perf_counter()
        write_raw_dataset(raw, out / "cases", ds, args.seed)
        configs = sorted({m["configuration"] for m in MODELS.values() if m["dataset"] == ds})
        archs = {m["configuration"]: m["arch"] for m in MODELS.values() if m["dataset"] == ds}
        plan_and_preprocess(ds, configs, archs, pre)
        print(f"[{DATASETS[ds]['name']}] data + plan + preprocess: {time.perf_counter() - t0:.1f} s", flush=True)

    env = dict(os.environ)
    for key in args.models:
        m = MODELS[key]
        name = DATASETS[m["dataset"]]["name"]
        folder_name = f"{TRAINER}__{PLANS}__{m['configuration']}"
        train_s = {}
        for fold in m["folds"]:
            train_s[str(fold)] = round(train(m["dataset"], m["configuration"], fold, args.epochs, args.iterations), 1)
            print(f"[{key}] fold {fold} trained in {train_s[str(fold)]} s", flush=True)
        src = res / name / folder_name
        dst = out / "models" / name / folder_name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
            shutil.copy2(src / f, dst / f)
        for fold in m["folds"]:
            (dst / f"fold_{fold}").mkdir()
            for f in ("checkpoint_final.pth", "debug.json"):
                if (src / f"fold_{fold}" / f).exists():
                    shutil.copy2(src / f"fold_{fold}" / f, dst / f"fold_{fold}" / f)
        plans = json.loads((dst / "plans.json").read_text(encoding="utf-8"))
        network = plans["configurations"][m["configuration"]]["architecture"]["network_class_name"]
        entry = {"dataset": name, "configuration": m["configuration"], "folds": m["folds"], "trainer": TRAINER,
                 "plans": PLANS, "architecture": network.rsplit(".", 1)[-1],
                 "train_seconds": train_s, "folder": str(dst.relative_to(out)), "folder_bytes": folder_size(dst),
                 "checkpoint_sha256": {str(f): sha256(dst / f"fold_{f}" / "checkpoint_final.pth")
                                       for f in m["folds"]}}
        if not args.skip_predict:
            cases = out / "cases" / name / "imagesTs"
            labels = [v for v in DATASETS[m["dataset"]]["labels"].values() if not isinstance(v, list) and v != 0]
            if m["dataset"] == 903:
                labels = [1, 2]
            for tag, tta in (("tta", True), ("notta", False)):
                ref = out / "reference" / key / tag
                if ref.exists():
                    shutil.rmtree(ref)
                cmd, secs = predict_reference(name, m["configuration"], m["folds"], cases, ref, tta,
                                              not args.no_probabilities, env)
                sanity = {}
                for seg in sorted(ref.glob("*.nii.gz")):
                    gt = out / "cases" / name / "labelsTs" / seg.name
                    sanity[seg.name] = dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))),
                                                      sitk.GetArrayFromImage(sitk.ReadImage(str(gt))), labels)
                shown = [Path(cmd[0]).name] + [c.replace(str(out) + os.sep, "") for c in cmd[1:]]
                entry[tag] = {"command": " ".join(shown),
                              "seconds": round(secs, 1), "dice_vs_ground_truth": sanity}
                print(f"[{key}] nnUNetv2_predict {tag}: {secs:.1f} s; Dice vs ground truth {sanity}", flush=True)
        if key in args.export:
            target = out / "exports" / f"{name}__{folder_name}.zip"
            cmd = export_zip(name, m["configuration"], m["folds"], target, env)
            entry["export"] = {"zip": str(target.relative_to(out)), "bytes": target.stat().st_size,
                               "command": " ".join([Path(cmd[0]).name, *cmd[1:4], target.name, *cmd[5:]])}
        manifest["models"][key] = entry
        print(f"[{key}] model folder {entry['folder_bytes'] / 1e6:.2f} MB", flush=True)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
