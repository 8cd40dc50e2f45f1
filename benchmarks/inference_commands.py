"""Whole commands of the inference benchmark: each contender in its own process, its wall time, the largest process's
peak RSS, and the Dice of its labels against another's.

Contenders: ``unetseg predict`` per engine and precision; a plain MONAI pipeline with the same weights, on the
predictor's grid and crop (so the same windows), and on MONAI's own default grid (Spacingd, no crop: labelled as
such); ``nnUNetv2_predict`` on an nnU-Net model folder of the same plan (PlainConvUNet, nnU-Net's own random
initialisation, one fold, no TTA), and ``unetseg predict`` on that very checkpoint imported.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unetseg.inference.windows import count_windows

HERE = Path(__file__).resolve()
_NNUNET_CHECKPOINT = """
import json, sys, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
folder = sys.argv[1]
plans = json.load(open(folder + "/plans.json")); dataset = json.load(open(folder + "/dataset.json"))
arch = plans["configurations"]["3d_fullres"]["architecture"]
torch.manual_seed(0)
network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1,
                                 len(dataset["labels"]), deep_supervision=False)
torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                          "device": "cpu"},
            "inference_allowed_mirroring_axes": (0, 1, 2)}, folder + "/fold_0/checkpoint_final.pth")
"""


def write_phantom(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """The CT phantom as int16 NIfTI (what a scanner export holds)."""
    from unetseg.phantoms import ct_phantom

    image, _ = ct_phantom(shape=shape, spacing=spacing)
    sitk.WriteImage(sitk.Cast(image.to_sitk(), sitk.sitkInt16), str(path))


# ---------------------------------------------------------------------------------------------- measuring


def run_measured(name: str, command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command`` under a small launcher (so this large process's memory is not counted): wall time and the
    peak RSS of the largest process of its tree."""
    done = subprocess.run([sys.executable, str(HERE), "measure", str(log), *command], capture_output=True,
                          text=True, encoding="utf-8", env=env)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed; see {log}:\n{log.read_text(encoding='utf-8')[-2000:]}")
    wall, rss_kib = done.stdout.split()[-2:]
    return {"wall_s": float(wall), "peak_rss_gib": int(rss_kib) / 1024**2}


def measure(log: str, command: list[str]) -> int:
    """Run ``command`` with its output in ``log``; print its wall time (s) and its largest process's peak RSS (KiB)."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return status


def min_dice(a_path: Path, b_path: Path, values: list[int]) -> float:
    """The smallest Dice over the labels present in either map (both on one grid)."""
    a, b = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    if a.GetSize() != b.GetSize() or not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3):
        raise RuntimeError(f"{a_path.name} and {b_path.name} are on different grids")
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    scores = []
    for v in values:
        p, q = x == v, y == v
        total = np.count_nonzero(p) + np.count_nonzero(q)
        if total:
            scores.append(2 * np.count_nonzero(p & q) / total)
    return min(scores) if scores else math.nan


# ---------------------------------------------------------------------------------------------- unetseg


def predict_command(image: Path, model: Path | str, out: Path, backend: str, precision: str) -> list[str]:
    return [sys.executable, "-m", "unetseg", "predict", "-i", str(image), "-m", str(model), "-o", str(out),
            "--device", "cpu", "--backend", backend, "--precision", precision, "--no-tta"]  # fmt: skip


def our_geometry(image: Path, model: Path) -> dict:
    """The predictor's crop box (on the RAS-oriented array, z y x), network grid and window count for ``image``."""
    from unetseg.inference.predictor import window_settings
    from unetseg.inference.prepare import Preparation, prepare
    from unetseg.io import read_image
    from unetseg.models.package import load_package

    package = load_package(model)
    settings = window_settings(package, "cpu", None, None)
    prepared = prepare([read_image(image)], Preparation.from_package(package), settings)
    return {"box": [[s.start, s.stop] for s in prepared.box], "grid": list(prepared.grid),
            "windows": count_windows(prepared.grid, settings.roi_size)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- MONAI


def monai_reference(image_path: str, model: str, out_dir: str, geometry: str) -> None:
    """A plain MONAI pipeline with the package's weights, window, overlap and Gaussian blending.

    ``geometry`` "default": Orientationd → Spacingd (MONAI's grid, no crop). Otherwise the JSON of `our_geometry`:
    Orientationd → the predictor's crop → clip and z-score → Resized to the predictor's grid (trilinear, the same
    sampling positions), so MONAI runs exactly the predictor's windows.
    """
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        Resized,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
        SpatialCropd,
    )

    from unetseg.models.package import load_package
    from unetseg.models.weights import build_model

    package = load_package(model)
    network = build_model(package, "cpu")
    patch = package.inference["patch_size"]
    norm = package.preprocessing["normalization"][0]
    low, high = norm["clip"]
    scale = ScaleIntensityRanged("image", low, high, (low - norm["mean"]) / norm["std"],
                                 (high - norm["mean"]) / norm["std"], clip=True)  # fmt: skip
    steps = [LoadImaged("image", image_only=False), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")]
    if geometry == "default":
        steps += [Spacingd("image", pixdim=package.preprocessing["target_spacing"], mode="bilinear"), scale]
    else:
        ours = json.loads(geometry)
        box = ours["box"][::-1]  # MONAI arrays are (x, y, z)
        steps += [SpatialCropd("image", roi_start=[b[0] for b in box], roi_end=[b[1] for b in box]), scale,
                  Resized("image", spatial_size=ours["grid"][::-1], mode="trilinear", align_corners=False)]
    pre = Compose(steps)
    data = pre({"image": image_path})
    zyx = data["image"].permute(0, 3, 2, 1)[None]  # the network's windows are (z, y, x)
    print(f"monai grid (z, y, x): {tuple(zyx.shape[2:])}, windows: {count_windows(zyx.shape[2:], patch)}", flush=True)
    with torch.no_grad():
        logits = sliding_window_inference(zyx, patch, 1, network, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    data["pred"] = logits[0].permute(0, 3, 2, 1)
    post = Compose([
        Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False), AsDiscreted("pred", argmax=True),
        SaveImaged("pred", output_dir=out_dir, output_postfix="monai", separate_folder=False, resample=False,
                   output_dtype=np.uint8),
    ])  # fmt: skip
    post(data)


def monai_command(image: Path, model: Path, out_dir: Path, geometry: str) -> list[str]:
    return [sys.executable, str(HERE), "monai-reference", str(image), str(model), str(out_dir), geometry]


# ---------------------------------------------------------------------------------------------- nnU-Net


def nnunet_model(work: Path, python: str) -> Path:
    """An nnU-Net v2 model folder of the planned network (nnU-Net's plans, one fold, nnU-Net's own random init)."""
    from inference_plan import DATASET

    folder = work / "nnUNet_results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    pre = work / "nnUNet_preprocessed" / DATASET
    (folder / "plans.json").write_text((pre / "nnUNetPlans.json").read_text(encoding="utf-8"), encoding="utf-8")
    raw = work / "nnUNet_raw" / DATASET / "dataset.json"
    (folder / "dataset.json").write_text(raw.read_text(encoding="utf-8"), encoding="utf-8")
    subprocess.run([python, "-c", _NNUNET_CHECKPOINT, str(folder)], check=True)
    return folder


def nnunet_command(python: str, input_dir: Path, out_dir: Path, model: Path) -> tuple[list[str], dict]:
    """``nnUNetv2_predict`` as a user runs it on the CPU (one fold, no TTA), and its environment."""
    code = "import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point; " \
           "sys.argv[0] = 'nnUNetv2_predict'; sys.exit(predict_entry_point())"  # fmt: skip
    argv = [python, "-c", code, "-i", str(input_dir), "-o", str(out_dir), "-d", model.parent.name, "-c",
            "3d_fullres", "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]  # fmt: skip
    results = model.parents[1]
    env = {**os.environ, "nnUNet_results": str(results), "nnUNet_raw": str(results.parent / "nnUNet_raw"),
           "nnUNet_preprocessed": str(results.parent / "nnUNet_preprocessed")}  # fmt: skip
    return argv, env


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        sys.exit(measure(sys.argv[2], sys.argv[3:]))
    if sys.argv[1] == "monai-reference":
        sys.path.insert(0, str(HERE.parent))
        monai_reference(*sys.argv[2:6])
