"""`make demo` / `unetseg demo`: segment the bundled CT sample with the default bundled model, on the CPU, then a
case that model never saw (a bundled sample marked ``heldout_for`` it), so the two Dice stand side by side.

Writes `<out>/<case>.seg.nrrd` (opens in Slicer with named, coloured segments) and `<out>/<case>.png`
(axial, coronal and sagittal slices with the segmentation overlaid) for each, then prints the Dice against
the sample's reference label and the wall time. What is missing is reported plainly; nothing is faked.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unetseg.evaluation.metrics import compute_metrics
from unetseg.image import Image, LabelImage
from unetseg.inference.predictor import segment
from unetseg.io import read_image, read_label_image, write_label_image
from unetseg.models import card
from unetseg.models.catalog import Catalog
from unetseg.models.package import ModelPackage
from unetseg.samples import SAMPLE_DIR, load_samples, reference_labels, sample_path, showcase, unseen_by


def _window(array: np.ndarray) -> np.ndarray:
    """Grey levels 0–255 between the 1st and 99th percentiles (a display window that suits CT and MRI)."""
    lo, hi = np.percentile(array, [1, 99])
    return (np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[float, float, float]]) -> np.ndarray:
    """An RGB image of `grey` with each label blended in its colour at 50 % opacity."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for value, color in colors.items():
        mask = labels == value
        rgb[mask] = 0.5 * rgb[mask] + 0.5 * 255 * np.asarray(color, dtype=np.float32)
    return rgb.astype(np.uint8)


def _resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum((np.arange(height) * img.shape[0] / height).astype(int), img.shape[0] - 1)
    cols = np.minimum((np.arange(width) * img.shape[1] / width).astype(int), img.shape[1] - 1)
    return img[rows][:, cols]


def overlay_png(path: Path, image: Image, result: LabelImage, height: int = 256) -> Path:
    """Write axial, coronal and sagittal mid-slices (through the segmentation's centre) side by side as PNG.

    Slices are shown in voxel order and stretched to millimetre proportions; the PNG is written with
    SimpleITK, so no imaging library beyond the core's dependencies is needed.
    """
    import SimpleITK as sitk

    labels = result.image.array
    fg = np.argwhere(labels > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(labels.shape) // 2
    grey = _window(image.array.astype(np.float32))
    colors = {label.value: label.color for label in result.labels}
    sx, sy, sz = image.spacing
    views = [
        (grey[centre[0]], labels[centre[0]], sy / sx),  # axial (y, x)
        (grey[:, centre[1]][::-1], labels[:, centre[1]][::-1], sz / sx),  # coronal (z, x), superior up
        (grey[:, :, centre[2]][::-1], labels[:, :, centre[2]][::-1], sz / sy),  # sagittal (z, y)
    ]
    panels = []
    for g, lab, aspect in views:
        width = max(1, round(height * g.shape[1] / (g.shape[0] * aspect)))
        panels.append(_resize_nearest(_overlay(g, lab, colors), height, width))
    mosaic = np.concatenate(panels, axis=1)
    sitk.WriteImage(sitk.GetImageFromArray(mosaic, isVector=True), str(path))
    return path


def run_demo(out_dir: str | Path = "demo-output") -> int:
    """Segment a bundled CT sample with its model (`samples.showcase`: one with a shipped case the model never
    saw), then each such unseen case.

    Prints the Dice on each next to the model card's held-out figure and the wall time; says plainly when no
    unseen case is shipped. Returns the exit code.
    """
    catalog = Catalog()
    if not load_samples(modality="CT"):
        print(f"No bundled CT sample in {SAMPLE_DIR} yet: nothing to segment. (Bundled samples: issue #6.)")
        return 1
    sample = showcase(catalog.names(modality="CT"), modality="CT")
    if sample is None:
        print("No bundled CT model yet: nothing to segment with. (Bundled models: issue #6.)")
        return 1
    model = catalog.get(sample["model"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Model '{model.name}': {card.heading(model)}")
    seen = sample.get("case", sample["name"]) in model.provenance.get("training_cases", [])  # its name in training
    _segment_sample(model, sample, out, "a case the model was trained on" if seen else "a bundled sample")
    if seen:
        print("  (the model was trained on this case: its Dice says nothing about other patients)")
    unseen = unseen_by(model.name)
    for other in unseen:
        _segment_sample(model, other, out, "a case the model never saw")
    if not unseen:
        print("No case this model never saw is shipped with the extension, so this demo cannot show how it does "
              "on another patient.")
    print(f"Model card: {card.measured(model)}")
    if note := card.demonstration_note(model):
        print(note)
    return 0


def _segment_sample(model: ModelPackage, sample: dict, out: Path, role: str) -> None:
    """Segment one bundled sample on the CPU, write its .seg.nrrd and overlay PNG, print time and Dice."""
    image = read_image(sample_path(sample["images"][0]))
    print(f"Segmenting '{sample['name']}', {role} ({sample.get('title', 'no title')}), {image.shape}, on the CPU …")
    start = time.perf_counter()
    result = segment(image, model, device="cpu")
    elapsed = time.perf_counter() - start
    seg_path = write_label_image(out / f"{sample['name']}.seg.nrrd", result)
    png_path = overlay_png(out / f"{sample['name']}.png", image, result)
    print(f"  wrote {seg_path} and {png_path} in {elapsed:.1f} s (segmentation only)")
    if sample.get("reference"):
        reference = read_label_image(sample_path(sample["reference"]))
        held = reference_labels(sample, [label.name for label in result.labels])
        scored = [label for label in result.labels if label.name in held]
        values = [label.value for label in scored]
        scores = compute_metrics(result.image.array, reference.image.array, values, tuple(reversed(image.spacing)))
        for label in scored:
            print(f"  Dice {label.name}: {scores[label.value]['dice']:.3f} on {role}")
    for message in result.messages:
        print(f"  note: {message}")
