"""The network nnU-Net plans for the inference benchmark's phantom, by the project's planner and by nnU-Net v2's own.

A raw dataset in nnU-Net's layout (``Dataset950_PhantomCT``: a few CT phantoms of the benchmark's body at the
network spacing 1.6×1.6×2 mm, 128×128×200 voxels, with their organ/lesion/lung/spine labels) is planned by
`unetseg.training.planning` and, where ``nnunetv2`` is importable (this interpreter, else ``--nnunet-python``),
by nnU-Net's ``ExperimentPlanner`` (default plans, 8 GB). The benchmark runs the project's 3d_fullres plan and asserts
that nnU-Net's agrees: target spacing, patch, strides, kernels and features per stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from unetseg.phantoms import CT_LABELS, ct_phantom
from unetseg.training.datasets import load_dataset
from unetseg.training.fingerprint import compute_fingerprint
from unetseg.training.planning import Plan, plan_configurations

DATASET_ID, DATASET = 950, "Dataset950_PhantomCT"
CASE_SHAPE, CASE_SPACING = (200, 128, 128), (1.6, 1.6, 2.0)  # z, y, x voxels; x, y, z mm
CASES = 3

_NNUNET_PLAN = """
import json, sys
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
extract_fingerprints([{id}], num_processes=1, check_dataset_integrity=True, verbose=False)
plan_experiments([{id}])
"""


def write_dataset(raw: Path) -> Path:
    """The raw dataset (written once): ``CASES`` phantoms at ``CASE_SPACING``, nnU-Net's file naming."""
    folder = raw / DATASET
    if (folder / "dataset.json").is_file():
        return folder
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for seed in range(CASES):
        image, labels = ct_phantom(shape=CASE_SHAPE, spacing=CASE_SPACING, seed=seed)
        ct = sitk.Cast(image.to_sitk(), sitk.sitkInt16)
        sitk.WriteImage(ct, str(folder / "imagesTr" / f"case{seed}_0000.nii.gz"))
        sitk.WriteImage(labels.to_sitk(), str(folder / "labelsTr" / f"case{seed}.nii.gz"))
    doc = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{label.name: label.value for label in CT_LABELS}},
        "numTraining": CASES,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return folder


def our_plan(dataset: Path) -> Plan:
    """The project's 3d_fullres plan of the dataset."""
    return plan_configurations(compute_fingerprint(load_dataset(dataset)))["3d_fullres"]


def nnunet_python(given: str | None) -> str | None:
    """An interpreter with nnunetv2: ``given``, else this one if it has it, else none."""
    if given:
        return given
    from importlib.util import find_spec

    return sys.executable if find_spec("nnunetv2") is not None else None


def nnunet_plan(work: Path, python: str) -> dict:
    """nnU-Net v2's own 3d_fullres configuration for the dataset (its fingerprint and default planner)."""
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    write_dataset(raw)
    plans = pre / DATASET / "nnUNetPlans.json"
    if not plans.is_file():
        env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
               "nnUNet_results": str(work / "nnUNet_results")}  # fmt: skip
        subprocess.run([python, "-c", _NNUNET_PLAN.format(id=DATASET_ID)], check=True, env=env,
                       capture_output=True, text=True, encoding="utf-8")  # fmt: skip
    return json.loads(plans.read_text(encoding="utf-8"))["configurations"]["3d_fullres"]


def plan_record(plan: Plan) -> dict:
    """What both planners decide, in one form (numpy order z, y, x; spacing in mm)."""
    return {
        "spacing_zyx": [round(s, 4) for s in reversed(plan.target_spacing)],
        "patch_size": list(plan.patch_size),
        "strides": [list(s) for s in plan.pool_strides],
        "kernels": [list(k) for k in plan.conv_kernel_sizes],
        "features": list(plan.features),
    }


def nnunet_record(config: dict) -> dict:
    """nnU-Net's 3d_fullres configuration in `plan_record`'s form."""
    arch = config["architecture"]["arch_kwargs"]
    return {
        "spacing_zyx": [round(s, 4) for s in config["spacing"]],
        "patch_size": list(config["patch_size"]),
        "strides": [list(s) for s in arch["strides"]],
        "kernels": [list(k) for k in arch["kernel_sizes"]],
        "features": list(arch["features_per_stage"]),
    }


def planned_network(work: Path, nnunet: str | None) -> tuple[Plan, dict, dict | None]:
    """The project's plan, its record, and nnU-Net's record (None without nnunetv2); they must agree."""
    dataset = write_dataset(work / "nnUNet_raw")
    plan = our_plan(dataset)
    ours = plan_record(plan)
    theirs = nnunet_record(nnunet_plan(work, nnunet)) if nnunet else None
    if theirs is not None and theirs != ours:
        raise AssertionError(f"The project's plan differs from nnU-Net's:\n  ours   {ours}\n  nnU-Net {theirs}")
    return plan, ours, theirs
