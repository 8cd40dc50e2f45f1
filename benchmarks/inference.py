"""Benchmark of the predictor (issue 4): wall time, peak RSS and agreement of three contenders on a CT phantom.

A 256×256×200 CT phantom at 0.8×0.8×2 mm (body surrounded by air, `phantoms.ct_phantom`) is written as
NIfTI; one model package (an nnU-Net-sized 3D network, 6 stages 32…320, patch 80×128×128, seeded random
weights unless ``--model`` names a trained package) is segmented by, each in its own process:

- ``unetseg predict`` (torch backend),
- ``unetseg predict --backend onnx`` (ONNX Runtime; the export is made first and not timed),
- a plain MONAI pipeline: LoadImaged → EnsureChannelFirstd → Orientationd → Spacingd → clip + z-score →
  ``sliding_window_inference`` (same window, overlap 0.5, Gaussian σ = 1/8) → Invertd → AsDiscreted →
  SaveImaged, with the same weights.

It prints each contender's whole-command wall time and peak RSS, the windows each runs, and the Dice
between the outputs. Then the memory check: a 512×512×400 CT segmented by a 10-class model with
``unetseg predict``, peak RSS. Needs ``nibabel`` for MONAI's NIfTI reader/writer (``pip install .[bench]``).

Usage: ``python benchmarks/inference.py [--work DIR] [--model PACKAGE] [--skip-memory]``
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unetseg.image import Label
from unetseg.inference.windows import count_windows
from unetseg.phantoms import CT_LABELS, ct_phantom

PHANTOM = {"shape": (200, 256, 256), "spacing": (0.8, 0.8, 2.0)}  # (z, y, x) voxels; (x, y, z) mm
LARGE_PHANTOM = {"shape": (400, 512, 512), "spacing": (0.8, 0.8, 2.0)}
TARGET_SPACING = [1.6, 1.6, 2.0]  # x, y, z mm
PATCH = [80, 128, 128]  # z, y, x
# nnU-Net's 3d_fullres topology for this patch and spacing: 6 stages, 32…320 features.
NNUNET = {
    "variant": "nnunet", "spatial_dims": 3, "in_channels": 1,
    "kernel_size": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    "filters": [32, 64, 128, 256, 320, 320],
}  # fmt: skip
CT_NORMALIZATION = {"scheme": "ct", "mean": 40.0, "std": 300.0, "clip": [-1000.0, 1000.0]}


# ---------------------------------------------------------------------------------------------- inputs


def write_phantom(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """Write the CT phantom as int16 NIfTI (what a scanner export holds)."""
    image, _ = ct_phantom(shape=shape, spacing=spacing)
    sitk.WriteImage(sitk.Cast(image.to_sitk(), sitk.sitkInt16), str(path))


def make_model(folder: Path, labels: list[Label], filters: list[int] | None = None, iterations: int = 0) -> Path:
    """A model package of nnU-Net's topology (``filters`` per stage): seeded random weights, or trained for
    ``iterations`` steps on another phantom so that its outputs are confident."""
    import torch

    from unetseg.models.package import save_package
    from unetseg.networks.factory import build_network

    network = {**NNUNET, "num_classes": len(labels) + 1, **({"filters": filters} if filters else {})}
    manifest = {
        "name": folder.name, "version": "0", "modality": "CT", "variant": "nnunet", "spatial_dims": 3,
        "description": f"benchmark network, {iterations} training steps on a phantom", "network": network,
        "inputs": [{"name": "CT"}], "labels": [label.to_dict() for label in labels],
        "preprocessing": {"orientation": "RAS", "target_spacing": TARGET_SPACING, "crop": "body",
                          "normalization": [CT_NORMALIZATION]},
        "inference": {"patch_size": PATCH, "overlap": 0.5},
    }  # fmt: skip
    torch.manual_seed(0)
    model = build_network(network)
    if iterations:
        fit_to_phantom(model, iterations)
    save_package(folder, manifest, model.state_dict())
    return folder


def fit_to_phantom(model, iterations: int, patch: tuple[int, int, int] = (32, 64, 64)) -> None:
    """A few Adam steps with the project's Dice + CE loss on random patches of a phantom at the network's grid.

    Random weights make a noisy arg-max that any resampling difference reshuffles, so the Dice between
    pipelines would measure noise; a briefly trained network gives confident outputs. (Not the project's
    trainer: that plans its own network, and this benchmark needs a given topology.)
    """
    import torch

    from unetseg.inference.preprocessing import normalize, reorient
    from unetseg.training.losses import build_loss

    target_zyx = tuple(reversed(TARGET_SPACING))
    source_zyx = tuple(reversed(PHANTOM["spacing"]))
    shape = tuple(round(n * s / t) for n, s, t in zip(PHANTOM["shape"], source_zyx, target_zyx, strict=True))
    image, labels = ct_phantom(shape=shape, spacing=tuple(TARGET_SPACING), seed=1)
    image, reorientation = reorient(image, "RAS")
    params = {k: v for k, v in CT_NORMALIZATION.items() if k != "scheme"}
    x = torch.from_numpy(normalize(image.array, "ct", params))[None, None]
    y = torch.from_numpy(reorientation.apply(labels.array).astype(np.int64))[None]
    loss, optimizer = build_loss({"name": "dice_ce"}), torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    model.train()
    for step in range(iterations):
        corner = [int(rng.integers(0, n - p + 1)) for n, p in zip(x.shape[2:], patch, strict=True)]
        window = (..., *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))
        optimizer.zero_grad()
        value = loss(model(x[window]), y[window])
        value.backward()
        optimizer.step()
        if step % 25 == 0 or step == iterations - 1:
            print(f"  training step {step + 1}/{iterations}: loss {value.item():.3f}", flush=True)
    model.eval()


# ---------------------------------------------------------------------------------------------- MONAI reference


def monai_reference(image_path: str, model: str, out_dir: str) -> None:
    """The plain MONAI pipeline with the package's weights, window, overlap and blending."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from unetseg.models.package import load_package
    from unetseg.models.weights import build_model

    package = load_package(model)
    network = build_model(package, "cpu")
    norm = package.preprocessing["normalization"][0]
    low, high = norm["clip"]
    pre = Compose([
        LoadImaged("image", image_only=False), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=package.preprocessing["target_spacing"], mode="bilinear"),
        # clip to [low, high], then z-score with the manifest's statistics: one linear map with clipping
        ScaleIntensityRanged("image", low, high, (low - norm["mean"]) / norm["std"],
                             (high - norm["mean"]) / norm["std"], clip=True),
    ])  # fmt: skip
    data = pre({"image": image_path})
    # MONAI arrays are (x, y, z); the network was built for (z, y, x) windows: transpose around it.
    zyx = data["image"].permute(0, 3, 2, 1)[None]
    print(f"monai grid (z, y, x): {tuple(zyx.shape[2:])}, windows: {count_windows(zyx.shape[2:], PATCH)}")
    with torch.no_grad():
        logits = sliding_window_inference(zyx, PATCH, 1, network, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    data["pred"] = logits[0].permute(0, 3, 2, 1)  # back to (C, x, y, z)
    post = Compose([
        Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
        AsDiscreted("pred", argmax=True),
        SaveImaged("pred", output_dir=out_dir, output_postfix="monai", separate_folder=False, resample=False,
                   output_dtype=np.uint8),
    ])  # fmt: skip
    post(data)


# ---------------------------------------------------------------------------------------------- running


def run_contender(name: str, command: list[str], log: Path) -> dict:
    """Run one contender in its own process; its wall time and peak RSS.

    The command runs under a small launcher process that reports its child's ``ru_maxrss``: a child forked
    straight from this (large) benchmark process would count this process's memory as its own peak.
    """
    done = subprocess.run(
        [sys.executable, __file__, "measure", str(log), *command], capture_output=True, text=True, encoding="utf-8"
    )
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-2000:]
        raise RuntimeError(f"{name} failed; see {log}:\n{tail}")
    wall, rss_kib = done.stdout.split()[-2:]
    return {"name": name, "wall_s": float(wall), "peak_rss_gib": int(rss_kib) / 1024**2, "log": log}


def measure(log: str, command: list[str]) -> int:
    """Run `command` with its output in `log`; print its wall time (s) and peak RSS (KiB); return its exit code."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    print(time.perf_counter() - start, usage.ru_maxrss)
    return os.waitstatus_to_exitcode(status)


def predict_command(image: Path, model: Path, out: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "unetseg", "predict", "-i", str(image), "-m", str(model),
            "-o", str(out), "--device", "cpu", "--backend", backend]  # fmt: skip


def dice_between(a_path: Path, b_path: Path, values: list[int]) -> float:
    """Mean Dice over the labels between two label maps, which must share one grid."""
    a, b = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    grid_a = (a.GetSize(), np.round(a.GetSpacing(), 4), np.round(a.GetOrigin(), 3), np.round(a.GetDirection(), 4))
    grid_b = (b.GetSize(), np.round(b.GetSpacing(), 4), np.round(b.GetOrigin(), 3), np.round(b.GetDirection(), 4))
    if not all(np.array_equal(x, y) for x, y in zip(grid_a, grid_b, strict=True)):
        raise RuntimeError(f"{a_path.name} and {b_path.name} are on different grids: {grid_a} vs {grid_b}")
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    scores = []
    for v in values:
        p, q = x == v, y == v
        total = np.count_nonzero(p) + np.count_nonzero(q)
        if total:
            scores.append(2 * np.count_nonzero(p & q) / total)
    return float(np.mean(scores)) if scores else math.nan


def our_windows(image_path: Path, model: Path) -> int:
    """The windows our predictor runs on this image (after the body crop), counted as it counts them."""
    from unetseg.inference.predictor import window_settings
    from unetseg.inference.prepare import Preparation, prepare
    from unetseg.io import read_image
    from unetseg.models.package import load_package

    package = load_package(model)
    settings = window_settings(package, "cpu", None, None)
    prepared = prepare([read_image(image_path)], Preparation.from_package(package), settings)
    return count_windows(prepared.grid, settings.roi_size)


def speed_comparison(work: Path, image: Path, model: Path) -> None:
    """Run the three contenders on `image` with `model`; print times, peak RSS, windows and agreement."""
    from unetseg.inference.onnx_backend import export_onnx
    from unetseg.models.package import load_package

    package = load_package(model)
    if not package.onnx_path.exists() or package.onnx_path.stat().st_mtime < package.weights_path.stat().st_mtime:
        export_onnx(package)
    out = work / package.name
    out.mkdir(exist_ok=True)
    outputs = {"torch": out / "torch.nii.gz", "onnx": out / "onnx.nii.gz", "monai": out / f"{image.stem}_monai.nii.gz"}
    monai = [sys.executable, __file__, "monai-reference", str(image), str(model), str(out)]
    runs = [
        run_contender("MONAI reference", monai, out / "monai.log"),
        run_contender("unetseg (torch)", predict_command(image, model, outputs["torch"], "torch"), out / "torch.log"),
        run_contender("unetseg (onnx)", predict_command(image, model, outputs["onnx"], "onnx"), out / "onnx.log"),
    ]
    monai_log = (out / "monai.log").read_text(encoding="utf-8")
    monai_windows = next(line for line in monai_log.splitlines() if "windows:" in line)
    print(f"\nModel {package.name}: {package.description}")
    print(f"  windows: unetseg {our_windows(image, model)}; {monai_windows}")
    print(f"  {'contender':<18} {'wall s':>8} {'× MONAI':>8} {'peak RSS GiB':>13}")
    for run in runs:
        ratio = run["wall_s"] / runs[0]["wall_s"]
        print(f"  {run['name']:<18} {run['wall_s']:8.1f} {ratio:8.2f} {run['peak_rss_gib']:13.2f}")
    values = [label.value for label in package.labels]
    for a, b in (("torch", "monai"), ("onnx", "monai"), ("torch", "onnx")):
        print(f"  mean Dice {a} vs {b}: {dice_between(outputs[a], outputs[b], values):.4f}")


def memory_check(work: Path) -> None:
    """Peak RSS of `unetseg predict` on a 512×512×400 CT with a 10-class model (a small network: the volumes,
    not the weights, set the memory)."""
    image = work / "ct_512x512x400.nii"
    if not image.exists():
        write_phantom(image, LARGE_PHANTOM["shape"], LARGE_PHANTOM["spacing"])
    labels = [Label(v, f"class {v}", (v / 10, 0.5, 1 - v / 10)) for v in range(1, 11)]
    model = work / "bench-10-classes"
    if not (model / "model.json").exists():
        make_model(model, labels, filters=[8, 16, 32, 64, 80, 80])
    run = run_contender("unetseg (torch)", predict_command(image, model, work / "out_large.nii.gz", "torch"),
                        work / "large.log")  # fmt: skip
    print(
        f"\nMemory check: CT {LARGE_PHANTOM['shape'][::-1]} voxels, 10-class model, {our_windows(image, model)} "
        f"windows: wall {run['wall_s']:.1f} s, peak RSS {run['peak_rss_gib']:.2f} GiB (target < 4 GiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: temp)")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="compare with this trained CT model package only (default: the two built-in ones)",
    )
    parser.add_argument("--train-steps", type=int, default=120, help="training steps of the small model")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 512×512×400 memory check")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="unetseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    image = work / "ct_256x256x200.nii"
    if not image.exists():
        write_phantom(image, PHANTOM["shape"], PHANTOM["spacing"])
    print(
        f"CT phantom {PHANTOM['shape'][::-1]} voxels at {PHANTOM['spacing']} mm, target {TARGET_SPACING} mm, "
        f"patch {PATCH} (z, y, x), {os.cpu_count()} CPU cores; whole commands, each in its own process"
    )
    models = [args.model] if args.model else []
    if not models:
        for name, filters, steps in (
            ("bench-nnunet-random", None, 0),
            ("bench-small-trained", [8, 16, 32, 64, 80, 80], args.train_steps),
        ):
            if not (work / name / "model.json").exists():
                make_model(work / name, CT_LABELS, filters, steps)
            models.append(work / name)
    for model in models:
        speed_comparison(work, image, model)
    if not args.skip_memory:
        memory_check(work)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "monai-reference":
        monai_reference(*sys.argv[2:5])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        sys.exit(measure(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
