"""The trainer on tiny synthetic datasets: it learns, resumes exactly, fine-tunes, reproduces, reports."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg.cli import main
from unetseg.evaluation.metrics import dice
from unetseg.inference.predictor import segment
from unetseg.jobs.progress import ProgressEmitter, parse_progress_line
from unetseg.models.package import load_package
from unetseg.models.weights import build_model, load_state_dict
from unetseg.phantoms import XRAY_LABELS, xray_phantom
from unetseg.training.checkpoints import LAST, load_checkpoint
from unetseg.training.dataset_checks import DatasetError
from unetseg.training.datasets import write_nnunet_dataset
from unetseg.training.planning import load_plan
from unetseg.training.trainer import TrainingCancelled, train

# A 64×56 radiograph phantom at 1.4 mm: two lung fields, 4 cases (one becomes the validation case).
XRAY_SHAPE, XRAY_SPACING = (64, 56), (1.4, 1.4)
QUICK = {"epochs": 1, "iterations_per_epoch": 2, "width": 0.25, "device": "cpu"}


class Recorder:
    """A progress callback that keeps every event (and log line) it gets."""

    def __init__(self, on_event=None) -> None:
        self.events: list[dict] = []
        self.logs: list[str] = []
        self.on_event = on_event

    def __call__(self, fraction, stage, message=None, **fields) -> None:
        self.events.append({"fraction": fraction, "stage": stage, "message": message, **fields})
        if self.on_event is not None:
            self.on_event(self.events[-1])

    def log(self, message: str) -> None:
        self.logs.append(message)


def _xray_cases(seeds) -> list:
    return [([image], label) for image, label in (xray_phantom(XRAY_SHAPE, XRAY_SPACING, seed=s) for s in seeds)]


@pytest.fixture(scope="module")
def xray_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xray") / "dataset"
    write_nnunet_dataset(folder, _xray_cases(range(4)), ["XR"], {lab.value: lab.name for lab in XRAY_LABELS},
                         modality="XR")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(xray_dataset, cache, tmp_path_factory):
    """One real training run (≈150 steps of a small 2D nnU-Net), shared by the tests that inspect it."""
    out = tmp_path_factory.mktemp("trained") / "model"
    recorder = Recorder()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one_thread fixture
    try:
        package = train(xray_dataset, out, epochs=6, iterations_per_epoch=25, width=0.5, device="cpu", seed=0,
                        cache_dir=cache, progress=recorder, name="xray-lungs-test")
    finally:
        torch.set_num_threads(threads)
    return package, recorder


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_state_dict(load_package(folder))


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_tiny_dataset_trains_to_high_validation_dice(trained):
    package, _ = trained
    metrics = package.provenance["metrics"]
    assert metrics["evaluated_on"] == "validation split" and len(metrics["evaluated_cases"]) == 1
    assert metrics["dice_right lung"] > 0.9 and metrics["dice_left lung"] > 0.9
    # The package segments an unseen phantom through the real predictor, on the input grid.
    image, label = xray_phantom(XRAY_SHAPE, XRAY_SPACING, seed=11)
    result = segment(image, package, device="cpu")
    assert result.image.same_grid(image)
    for lab in XRAY_LABELS:
        assert dice(result.image.array == lab.value, label.array == lab.value) > 0.9


@pytest.mark.slow
def test_package_holds_labels_preprocessing_plans_and_checkpoints(trained):
    package, _ = trained
    m = package.manifest
    assert [(lab["value"], lab["name"]) for lab in m["labels"]] == [(1, "right lung"), (2, "left lung")]
    assert "^Lung~SCT^24028007^Right~" in m["labels"][0]["terminology"]
    assert "^Lung~SCT^7771000^Left~" in m["labels"][1]["terminology"]
    assert m["modality"] == "XR" and m["spatial_dims"] == 2 and m["variant"] == "nnunet"
    assert m["preprocessing"]["normalization"] == [{"scheme": "zscore", "use_mask": False}]
    assert m["preprocessing"]["target_spacing"][:2] == pytest.approx(XRAY_SPACING)
    # Left/right labels: no mirroring along the left-right (x) axis, in training or test-time augmentation.
    assert m["inference"]["mirror_axes"] == [0]
    prov = m["provenance"]
    assert prov["epochs"] == 6 and prov["iterations"] == 150 and prov["cpu_time_s"] > 0
    assert prov["source_label_values"] == {"right lung": 1, "left lung": 2}
    plan = load_plan(package.path / "plans.json")
    assert tuple(m["inference"]["patch_size"]) == plan.patch_size
    log = [json.loads(line) for line in (package.path / "training_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["val_dice"] > log[0]["val_dice"]
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        ckpt = torch.load(package.path / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert set(ckpt["model"]) == set(load_state_dict(package))
    assert load_checkpoint(package.path / "checkpoints" / LAST)["epoch"] == 6
    build_model(package)  # the manifest's network config rebuilds the network the weights fit


@pytest.mark.slow
def test_progress_reports_epochs_losses_dice_and_eta(trained):
    _, recorder = trained
    fractions = [e["fraction"] for e in recorder.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and recorder.events[-1]["stage"] == "done"
    epochs = [e for e in recorder.events if e["stage"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5, 6]
    for event in epochs:
        assert {"iteration", "train_loss", "lr", "val_dice", "val_dice_left lung", "eta_s"} <= set(event)
    assert epochs[-1]["eta_s"] == pytest.approx(0.0, abs=1e-6)
    assert any("no mirroring" in line for line in recorder.logs)
    # The events survive the JSON-lines protocol the Slicer panel reads.
    stream = io.StringIO()
    emitter = ProgressEmitter(stream)
    emitter(epochs[0]["fraction"], "epoch", epochs[0]["message"],
            **{k: v for k, v in epochs[0].items() if k not in ("fraction", "stage", "message")})
    parsed = parse_progress_line(stream.getvalue())
    assert parsed["type"] == "progress" and parsed["val_dice"] == pytest.approx(epochs[0]["val_dice"])


def test_fixed_seed_reproduces_a_cpu_run(xray_dataset, cache, tmp_path):
    # Run "b" loads its patches in two worker processes: patches depend on the seed and their index only.
    for run, seed, workers in (("a", 3, 0), ("b", 3, 2), ("c", 4, 0)):
        train(xray_dataset, tmp_path / run, seed=seed, cache_dir=cache, val_fraction=0.0, num_workers=workers,
              **QUICK)
    assert _same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


def test_resume_continues_from_the_saved_epoch_with_identical_state(xray_dataset, cache, tmp_path):
    options = {**QUICK, "epochs": 2, "iterations_per_epoch": 3, "cache_dir": cache}
    train(xray_dataset, tmp_path / "straight", **options)

    cancel = threading.Event()
    stopper = Recorder(lambda e: e["stage"] == "epoch" and cancel.set())
    with pytest.raises(TrainingCancelled):
        train(xray_dataset, tmp_path / "stopped", cancel=cancel, progress=stopper, **options)
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / LAST)
    assert saved["epoch"] == 1 and saved["iteration"] == 3
    assert not (tmp_path / "stopped" / "model.json").exists()  # cancelled: no package, checkpoint kept

    resumed = Recorder()
    train(xray_dataset, tmp_path / "stopped", resume=True, progress=resumed, **options)
    assert any("resuming after epoch 1" in line for line in resumed.logs)
    assert [e["epoch"] for e in resumed.events if e["stage"] == "epoch"] == [2]
    # Same patches, optimizer momentum, RNG and schedule: bit-identical to the uninterrupted run.
    assert _same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "stopped"))
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / LAST)["optimizer"]
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / LAST)["optimizer"]
    assert all(torch.equal(a["state"][k]["momentum_buffer"], b["state"][k]["momentum_buffer"]) for k in a["state"])

    with pytest.raises(ValueError, match="already holds a training run"):
        train(xray_dataset, tmp_path / "stopped", **options)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_weights(trained, xray_dataset, cache, tmp_path):
    package, _ = trained
    frozen = {**QUICK, "learning_rate": 0.0, "iterations_per_epoch": 1, "cache_dir": cache}
    tuned = train(xray_dataset, tmp_path / "same", init=package.path, **frozen)
    assert _same_weights(load_state_dict(package), load_state_dict(tuned))
    assert tuned.provenance["fine_tuned_from"] == "xray-lungs-test"
    assert tuned.inference["patch_size"] == package.inference["patch_size"]

    # New labels (both lungs as one class): a fresh output head, every other weight from the model.
    merged = tmp_path / "merged"
    cases = [([image], label.with_array(np.minimum(label.array, 1))) for (image,), label in _xray_cases(range(3))]
    write_nnunet_dataset(merged, cases, ["XR"], {1: "lungs"}, modality="XR")
    fresh = train(merged, tmp_path / "new-labels", init=package.path, **frozen)
    old, new = load_state_dict(package), load_state_dict(fresh)
    head = [k for k in new if new[k].shape != old[k].shape]
    assert head and all(new[k].shape[0] == 2 for k in head if new[k].ndim > 1)
    assert all(torch.equal(new[k], old[k]) for k in new if k not in head)
    assert [lab.name for lab in fresh.labels] == ["lungs"]


def test_bad_dataset_produces_the_full_validation_report(xray_dataset, tmp_path):
    broken = tmp_path / "broken"
    (image, label), = [(imgs[0], lab) for imgs, lab in _xray_cases([5])]
    wrong = label.array.copy()
    wrong[0, :3, :3] = 7  # a label value the dataset does not declare
    write_nnunet_dataset(broken, [([image], label.with_array(wrong)), ([image], label)], ["XR"],
                         {lab.value: lab.name for lab in XRAY_LABELS})
    (broken / "imagesTr" / "case_001_0000.nii.gz").unlink()  # a missing image
    with pytest.raises(DatasetError) as err:
        train(broken, tmp_path / "out", **QUICK)
    report = str(err.value)
    assert "undeclared_label" in report and "[7]" in report
    assert "missing_sequence" in report and "case_001" in report
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("variant", ["unet", "vnet", "unetpp", "attention_unet"])
def test_every_variant_trains_into_a_loadable_package(variant, xray_dataset, cache, tmp_path):
    package = train(xray_dataset, tmp_path / variant, variant=variant, cache_dir=cache, **{**QUICK, "width": 0.125})
    assert package.variant == variant and package.network_config["variant"] == variant
    stride = 16  # four 2× down-samplings in the classic variants: the plan's patch is rounded up to it
    assert all(p % stride == 0 for p in package.inference["patch_size"])
    image, _ = xray_phantom(XRAY_SHAPE, XRAY_SPACING, seed=9)
    assert segment(image, package, device="cpu").image.shape == image.shape


def test_time_budget_stops_the_run(xray_dataset, cache, tmp_path):
    recorder = Recorder()
    package = train(xray_dataset, tmp_path / "budget", time_budget_min=0.05, iterations_per_epoch=10_000,
                    width=0.125, device="cpu", cache_dir=cache, progress=recorder)
    prov = package.provenance
    assert prov["epochs"] == 1 and 0 < prov["iterations"] < 10_000
    assert 3.0 <= prov["wall_time_s"] < 60
    assert any(e.get("eta_s") is not None for e in recorder.events if e["stage"] == "train")


def test_cli_train_prints_json_progress_and_result(xray_dataset, cache, tmp_path, capsys):
    out = tmp_path / "cli-model"
    code = main(["train", str(xray_dataset), "--out", str(out), "--epochs", "1", "--iterations-per-epoch", "2",
                 "--width", "0.25", "--device", "cpu", "--cache-dir", str(cache), "--progress", "json"])
    assert code == 0
    events = [parse_progress_line(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "result" and events[-1]["output"] == str(out)
    assert any(e["type"] == "progress" and e.get("epoch") == 1 and "val_dice" in e for e in events)
    assert "unetseg train" in load_package(out).provenance["command"]
    # A second run into the same folder is refused with a clear error event and exit code 1 (EXIT_FAILED).
    code = main(["train", str(xray_dataset), "--out", str(out), "--epochs", "1", "--progress", "json"])
    error = [parse_progress_line(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert code == 1 and error["type"] == "error" and "--resume" in error["message"]


def test_bad_options_are_clear_errors(xray_dataset, tmp_path):
    with pytest.raises(ValueError, match="Unknown variant"):
        train(xray_dataset, tmp_path / "x", variant="resnet")
    with pytest.raises(ValueError, match="Unknown training option"):
        train(xray_dataset, tmp_path / "x", epoch=3)
    with pytest.raises(ValueError, match="time_budget_min"):
        train(xray_dataset, tmp_path / "x", time_budget_min=0)
    with pytest.raises(FileNotFoundError, match="--resume"):
        train(xray_dataset, tmp_path / "x", resume=True)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_mixed_precision_learns_the_phantoms(xray_dataset, cache, tmp_path):
    """The CUDA path end to end: fp16 autocast with a gradient scaler, pinned batches from worker processes,
    validation on the GPU, and a package the predictor runs on the GPU."""
    package = train(xray_dataset, tmp_path / "cuda", epochs=6, iterations_per_epoch=25, width=0.5, device="cuda",
                    seed=0, cache_dir=cache, num_workers=2)
    assert package.provenance["metrics"]["dice_right lung"] > 0.9
    image, label = xray_phantom(XRAY_SHAPE, XRAY_SPACING, seed=11)
    result = segment(image, package, device="cuda")
    for lab in XRAY_LABELS:
        assert dice(result.image.array == lab.value, label.array == lab.value) > 0.9
