"""Benchmark of inference (issues 4 and 14): the network nnU-Net plans for a CT phantom, near this CPU's limit.

1. **The network.** A raw dataset of CT phantoms is planned by the project's planner and by nnU-Net v2's own
   (`inference_plan`; asserted equal when ``nnunetv2`` is importable); the benchmark builds that 3d_fullres network
   (DynUNet = nnU-Net's PlainConvUNet topology), trains it briefly (``--train-steps``: a random network's near-ties
   would make any rounding look unstable), exports it to ONNX, and validates it for lower precisions (`unetseg
   models validate-precision`: bf16 in torch, int8 from ONNX Runtime's static quantisation calibrated on the
   model's sample windows).
2. **The machine's peak**, measured in the same run: a 4096² matrix product in fp32 and in bf16 (the best of
   before and after the window timings). FLOPs are those of direct convolution: an engine using Winograd or
   another fast algorithm can exceed 100 % of the matrix-product peak.
3. **Per engine and precision** (torch fp32 / bf16, ONNX Runtime fp32 / int8, OpenVINO fp32 / bf16 /
   int8): seconds per window (median and range over ``--reps`` interleaved repetitions), GFLOP/s and the fraction
   of the peak of its precision (int8 against the bf16 peak: no int8 peak is measured), and the label agreement
   with torch fp32 on the same windows.
4. **Whole commands** on a 256×256×200 CT at 0.8×0.8×2 mm, each in its own process, interleaved over ``--reps``
   repetitions (the order rotates): ``unetseg predict`` per engine and precision, a plain MONAI pipeline on the
   predictor's grid and crop (the same windows) and on MONAI's default grid (labelled), ``nnUNetv2_predict`` on an
   nnU-Net model folder of the same plan, and ``unetseg predict`` on that checkpoint imported: wall time (median,
   range), the largest process's peak RSS, and the smallest per-label Dice against ``unetseg`` torch fp32 (the
   imported checkpoint against nnU-Net's own output: same weights).
5. **Memory**: a 512×512×400 CT with a 10-class model (small features: the volumes set the memory), peak RSS.

Usage: ``python benchmarks/inference.py [--work DIR] [--reps 3] [--skip-commands] [--skip-memory]``
(``--nnunet-python`` names an interpreter with nnunetv2 when this one lacks it; needs ``nibabel`` for MONAI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules, beside it
from inference_commands import (
    min_dice,
    monai_command,
    nnunet_command,
    nnunet_model,
    our_geometry,
    predict_command,
    run_measured,
    write_phantom,
)
from inference_engines import build_engines, matmul_peak, summary, time_engines, window_gflop
from inference_plan import DATASET, nnunet_python, planned_network
from inference_report import report

from unetseg.cpu_features import cpu_features
from unetseg.image import Label
from unetseg.inference.nnunet_resampling import new_shape
from unetseg.inference.nnunet_windows import count_tiles
from unetseg.inference.onnx_backend import export_onnx
from unetseg.models.package import ModelPackage, load_package, save_package
from unetseg.models.precision_check import check_precisions, output_kind
from unetseg.models.validation_windows import validation_windows
from unetseg.networks.factory import build_network
from unetseg.phantoms import CT_LABELS

PHANTOM = {"shape": (200, 256, 256), "spacing": (0.8, 0.8, 2.0)}  # (z, y, x) voxels; (x, y, z) mm
LARGE_PHANTOM = {"shape": (400, 512, 512), "spacing": (0.8, 0.8, 2.0)}
COMMANDS = (("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"),
            ("openvino", "bf16"), ("openvino", "int8"))  # fmt: skip


def make_package(folder: Path, plan, labels: list[Label], filters: list[int] | None = None,
                 train_on: Path | None = None, steps: int = 0) -> ModelPackage:  # fmt: skip
    """A package of the planned network (``filters`` per stage instead of the plan's), seeded random weights, then
    trained for ``steps`` steps on the case ``train_on`` (image path; its label in the sibling labelsTr)."""
    network = {**plan.network_config, "deep_supervision": False, "num_classes": len(labels) + 1,
               **({"filters": filters} if filters else {})}  # fmt: skip
    manifest = {
        "name": folder.name, "version": "0", "modality": "CT", "variant": "nnunet", "spatial_dims": 3,
        "description": "the network nnU-Net plans for the benchmark phantom, seeded random weights",
        "network": network, "inputs": [{"name": "CT"}], "labels": [label.to_dict() for label in labels],
        "preprocessing": {"orientation": "RAS", "target_spacing": list(plan.target_spacing), "crop": "body",
                          "normalization": [dict(plan.normalization[0])]},
        "inference": {"patch_size": list(plan.patch_size), "overlap": 0.5},
    }  # fmt: skip
    torch.manual_seed(0)
    model = build_network(network)
    if steps:
        fit(model, train_on, manifest["preprocessing"]["normalization"][0], steps)
    return save_package(folder, manifest, model.state_dict())


def fit(model: torch.nn.Module, image_path: Path, normalization: dict, steps: int,
        patch: tuple[int, int, int] = (32, 64, 64)) -> None:  # fmt: skip
    """A few Adam steps of the project's Dice + CE on random patches of one phantom case at the network spacing.

    A random network's outputs are near-ties that any rounding reshuffles, so every lower precision would look
    unstable and label agreement would measure noise; a briefly trained network is confident, as real ones are.
    """
    from unetseg.inference.preprocessing import normalize, reorient
    from unetseg.io import read_image
    from unetseg.training.losses import build_loss

    image, reorientation = reorient(read_image(image_path), "RAS")
    labels = read_image(image_path.parents[1] / "labelsTr" / image_path.name.replace("_0000", ""))
    params = {k: v for k, v in normalization.items() if k != "scheme"}
    x = torch.from_numpy(normalize(image.array, "ct", params))[None, None]
    y = torch.from_numpy(reorientation.apply(labels.array).astype("int64"))[None]
    loss, optimizer = build_loss({"name": "dice_ce"}), torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        room = [n - p + 1 for n, p in zip(x.shape[2:], patch, strict=True)]
        corner = [int(torch.randint(0, r, (1,), generator=generator)) for r in room]
        window = (..., *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))
        optimizer.zero_grad()
        value = loss(model(x[window]), y[window])
        value.backward()
        optimizer.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"  training step {step + 1}/{steps}: loss {value.item():.3f}", flush=True)
    model.eval()


def prepared_package(work: Path, plan, steps: int) -> ModelPackage:
    """The planned network's package, briefly trained, with its ONNX export and precision record (made once per work
    folder)."""
    folder = work / "bench-planned"
    if not (folder / "model.json").is_file():
        case = work / "nnUNet_raw" / DATASET / "imagesTr" / "case0_0000.nii.gz"
        make_package(folder, plan, CT_LABELS, train_on=case, steps=steps)
    package = load_package(folder)
    if not package.onnx_path.is_file():
        export_onnx(package)
    if "precision" not in package.inference:
        check_precisions(package, count=2, report=lambda line: print(f"  {line}", flush=True))
    return load_package(folder)


def network_table(package: ModelPackage, reps: int, peaks: dict[str, float]) -> list[dict]:
    """Per engine and precision: seconds per window, GFLOP/s, fraction of peak, agreement with torch fp32."""
    gflop = window_gflop(package)
    sigmoid, names = output_kind(package)
    windows = validation_windows(package, 2).windows
    timed = time_engines(build_engines(package), windows, reps, sigmoid, names)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):  # the best of before and after
        peaks[name] = max(peaks[name], matmul_peak(dtype))
    rows = []
    for (engine, precision), result in timed.items():
        median, low, high = summary(result["seconds"])
        peak = peaks["fp32" if precision == "fp32" else "bf16"]
        rows.append({"engine": engine, "precision": precision, "s_per_window": [median, low, high],
                     "gflops": gflop / median, "of_peak": gflop / median / peak, "gflop_per_window": gflop,
                     "foreground_agreement": result["foreground_agreement"],
                     "min_dice": result["min_dice"]})  # fmt: skip
    return rows


def command_table(work: Path, package: ModelPackage, plan, reps: int, nnunet: str | None) -> list[dict]:
    """Whole commands, interleaved over ``reps`` repetitions."""
    image = work / "ct_256x256x200.nii.gz"
    if not image.exists():
        write_phantom(image, PHANTOM["shape"], PHANTOM["spacing"])
    out = work / "outputs"
    out.mkdir(exist_ok=True)
    geometry = our_geometry(image, package.path)
    contenders = {}
    for backend, precision in COMMANDS:
        if backend == "openvino" and not _has("openvino"):
            continue
        target = out / f"{backend}-{precision}.nii.gz"
        contenders[f"unetseg {backend} {precision}"] = (predict_command(image, package.path, target, backend,
                                                                        precision), None, target, geometry["windows"])
    monai_grid = out / f"{image.name.split('.')[0]}_monai.nii.gz"
    contenders["MONAI, the predictor's grid"] = (monai_command(image, package.path, out, json.dumps(geometry)), None,
                                                 monai_grid, geometry["windows"])  # fmt: skip
    contenders["MONAI, its default grid"] = (monai_command(image, package.path, out / "default", "default"), None,
                                             out / "default" / monai_grid.name, None)  # fmt: skip
    if nnunet:
        model = nnunet_model(work, nnunet)
        (work / "nnunet_in").mkdir(exist_ok=True)
        link = work / "nnunet_in" / "case_0000.nii.gz"
        if not link.exists():
            link.symlink_to(image)
        argv, env = nnunet_command(nnunet, work / "nnunet_in", out / "nnunet", model)
        tiles = count_tiles(new_shape(PHANTOM["shape"], PHANTOM["spacing"][::-1], plan.target_spacing[::-1]),
                            plan.patch_size)  # nnU-Net's grid (CT air is not zero: no crop) and tiles
        contenders["nnUNetv2_predict"] = (argv, env, out / "nnunet" / "case.nii.gz", tiles)
        imported = _import_nnunet(work, model)
        target = out / "imported-torch.nii.gz"
        contenders["unetseg, nnU-Net checkpoint imported"] = (predict_command(image, imported, target, "torch",
                                                                              "fp32"), None, target, tiles)  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    order = list(contenders)
    for rep in range(reps):
        for name in order[rep % len(order):] + order[: rep % len(order)]:
            argv, env, _, _ = contenders[name]
            runs[name].append(run_measured(name, argv, work / "logs" / f"{_slug(name)}-{rep}.log", env))
            print(f"  rep {rep + 1}: {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    values = [label.value for label in package.labels]
    reference = contenders["unetseg torch fp32"][2]
    rows = []
    for name, (_, _, target, windows) in contenders.items():
        walls = [r["wall_s"] for r in runs[name]]
        against = contenders["nnUNetv2_predict"][2] if name.endswith("imported") else reference  # same weights
        dice = min_dice(target, against, values) if name != "nnUNetv2_predict" else None
        rows.append({"contender": name, "wall_s": list(summary(walls)), "windows": windows or _logged_windows(name,
                     work), "peak_rss_gib": max(r["peak_rss_gib"] for r in runs[name]), "min_dice": dice})  # fmt: skip
    return rows


def _import_nnunet(work: Path, model: Path) -> Path:
    """The nnU-Net checkpoint converted into a package (private model folder)."""
    from unetseg.models.catalog import Catalog
    from unetseg.models.importers import import_any

    catalog = Catalog(user_dir=work / "imported")
    name = "bench-nnunet-imported"
    if not (catalog.user_dir / name).is_dir():
        import_any(model, catalog, name=name)
    return catalog.user_dir / name


def _logged_windows(name: str, work: Path) -> str:
    log = work / "logs" / f"{_slug(name)}-0.log"
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if "windows:" in line]
    return lines[0].split("windows:")[-1].strip() if lines else "?"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def memory_check(work: Path, plan) -> dict:
    """Peak RSS of `unetseg predict` (torch fp32) on a 512×512×400 CT with a 10-class model of small features."""
    image = work / "ct_512x512x400.nii"
    if not image.exists():
        write_phantom(image, LARGE_PHANTOM["shape"], LARGE_PHANTOM["spacing"])
    labels = [Label(v, f"class {v}", (v / 10, 0.5, 1 - v / 10)) for v in range(1, 11)]
    model = work / "bench-10-classes"
    if not (model / "model.json").exists():
        make_package(model, plan, labels, filters=[8, 16, 32, 64, 80, 80])
    run = run_measured("memory", predict_command(image, model, work / "out_large.nii.gz", "torch", "fp32"),
                       work / "logs" / "large.log")  # fmt: skip
    return {**run, "windows": our_geometry(image, model)["windows"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: temp)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default: 3)")
    parser.add_argument("--nnunet-python", help="an interpreter with nnunetv2 (default: this one, if it has it)")
    parser.add_argument("--train-steps", type=int, default=60, help="training steps of the planned network")
    parser.add_argument("--skip-commands", action="store_true", help="only the network (no whole commands)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 512×512×400 memory check")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="unetseg-bench-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    nnunet = nnunet_python(args.nnunet_python)
    plan, ours, theirs = planned_network(work, nnunet)
    features = cpu_features()
    results = {"cpu": platform.processor() or platform.machine(), "isa": features.describe(),
               "threads": torch.get_num_threads(), "plan": ours,
               "nnunet_plan": "agrees" if theirs else "nnunetv2 not importable"}  # fmt: skip
    print(json.dumps(results), flush=True)
    package = prepared_package(work, plan, args.train_steps)
    results["precision_record"] = package.inference["precision"]
    results["peak_gflops"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"  matrix-product peak: {results['peak_gflops']}", flush=True)
    results["network"] = network_table(package, args.reps, results["peak_gflops"])
    if not args.skip_commands:
        results["commands"] = command_table(work, package, plan, args.reps, nnunet)
    if not args.skip_memory:
        results["memory"] = memory_check(work, plan)
    (work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(report(results))
    print(f"\n(results in {work / 'results.json'}; {os.cpu_count()} CPU cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
