"""Training datasets: readers for three layouts, one validation report, and the preprocessed-case cache.

Layouts read by `load_dataset`:
- an nnU-Net v2 raw folder: ``dataset.json`` with ``channel_names``, ``labels`` (name → value) and
  ``file_ending``; images ``imagesTr/<case>_0000<ending>``, ``_0001`` … per channel; ``labelsTr/<case><ending>``;
- a Medical Segmentation Decathlon folder: ``dataset.json`` with ``modality``, ``labels`` (value → name) and
  ``training`` (``[{"image", "label"}]``); a 4D image holds all channels and is split into them;
- a list of cases, as JSON (a list of ``{"name"?, "image" or "images", "label"}``, or an object with ``cases``
  and optional ``channel_names``, ``labels`` {value: name} and ``modality``) or as CSV with columns
  ``name`` (optional), ``image`` or ``image_<channel name>`` (one column per channel, in order) and ``label``.
  Paths are relative to the list file. Undeclared labels are taken from the label maps.
Any format SimpleITK reads works for the images and label maps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from unetseg import io
from unetseg.image import Image
from unetseg.inference import preprocessing
from unetseg.training.planning import Plan

CACHE_VERSION = 1
MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01
_CT_NAMES = {"ct"}
_MR_HINTS = ("mr", "t1", "t2", "flair", "dwi", "adc", "pd", "swi", "bold")
_XR_NAMES = {"xr", "x-ray", "xray", "dx", "cr", "radiograph"}


@dataclass(frozen=True)
class Case:
    """One training case: its channel files (in channel order) and its label map."""

    name: str
    image_paths: tuple[Path, ...]
    label_path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_paths", tuple(Path(p) for p in self.image_paths))
        if self.label_path is not None:
            object.__setattr__(self, "label_path", Path(self.label_path))


@dataclass
class Dataset:
    """Cases plus what they hold: channel names, labels {value: name} (0 is background) and modality."""

    cases: list[Case]
    channel_names: list[str]
    labels: dict[int, str]
    modality: str = "other"
    root: Path | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; `case` is None for dataset-wide problems."""

    case: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"case {self.case}" if self.case else "dataset"
        return f"[{self.kind}] {where}: {self.message}"


@dataclass
class ValidationReport:
    """Every problem found in a dataset; `ok` when there is none."""

    source: str
    num_cases: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the dataset can be trained on."""
        return not self.problems

    def __str__(self) -> str:
        head = f"Dataset {self.source}: {self.num_cases} case(s)"
        if self.ok:
            return head + ", no problems."
        return "\n".join([f"{head}, {len(self.problems)} problem(s):", *(f"  - {p}" for p in self.problems)])


class DatasetError(ValueError):
    """A dataset failed validation; `report` lists every problem."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class CroppedCase:
    """A case read and cropped to the bounding box of its non-zero image voxels (nnU-Net's crop)."""

    name: str
    images: np.ndarray  # (C, z, y, x) float32
    label: np.ndarray | None  # (z, y, x) label values
    nonzero: np.ndarray  # (z, y, x) bool: voxels non-zero in any channel
    spacing: tuple[float, float, float]  # (x, y, z)
    shape_before_crop: tuple[int, int, int]
    bbox: tuple[tuple[int, int], ...]  # (start, stop) per numpy axis


@dataclass
class PreprocessedCase:
    """A case ready for patch sampling: cropped, normalised, resampled to the plan's spacing.

    ``label`` holds class indices (class ``i`` is label value ``plan.label_values[i]``); ``class_locations``
    maps each foreground class index to sampled voxel coordinates ``(N, 3)`` for foreground oversampling.
    Arrays loaded from the cache are read-only memory maps.
    """

    name: str
    image: np.ndarray  # (C, z, y, x) float32
    label: np.ndarray  # (z, y, x) uint8
    spacing: tuple[float, float, float]  # (x, y, z)
    class_locations: dict[int, np.ndarray]
    properties: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- readers


def load_dataset(path: str | Path, *, modality: str | None = None, labels: dict[int, str] | None = None) -> Dataset:
    """Read a dataset in any supported layout (see the module docstring); `modality`/`labels` override it."""
    path = Path(path)
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise ValueError(f"{path} has no dataset.json; give an nnU-Net or MSD dataset folder, "
                             "or a JSON/CSV list of image/label pairs.")
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"Dataset not found: {path}.")
    if path.suffix.lower() == ".csv":
        dataset = _from_csv(path, modality, labels)
    elif path.suffix.lower() == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "training" in doc and "modality" in doc:
            dataset = _from_msd(path, doc)
        elif isinstance(doc, dict) and "file_ending" in doc:
            dataset = _from_nnunet(path, doc)
        else:
            dataset = _from_case_list(path, doc, modality, labels)
    else:
        raise ValueError(f"Unknown dataset file {path.name}: give a folder with dataset.json, a .json or a .csv list.")
    if modality:
        dataset.modality = modality
    if labels:
        dataset.labels = _with_background(labels)
    return dataset


def _from_nnunet(json_path: Path, doc: dict) -> Dataset:
    root = json_path.parent
    channel_names = _ordered_names(doc["channel_names"])
    labels = {}
    for name, value in doc["labels"].items():
        if not isinstance(value, int):
            raise ValueError(f"Label {name!r} in {json_path} is a region ({value}); region-based labels are not "
                             "supported. Give each label one integer value.")
        labels[value] = name
    ending = doc["file_ending"]
    if "dataset" in doc:  # nnU-Net v2's explicit file list
        cases = [Case(name, [root / p for p in entry["images"]], root / entry["label"])
                 for name, entry in doc["dataset"].items()]
    else:
        names = _nnunet_case_names(root / "imagesTr", ending) | _stems(root / "labelsTr", ending)
        cases = [Case(name, [root / "imagesTr" / f"{name}_{c:04d}{ending}" for c in range(len(channel_names))],
                      root / "labelsTr" / f"{name}{ending}") for name in sorted(names)]
    return Dataset(cases, channel_names, _with_background(labels), _modality_of(channel_names), root)


def _nnunet_case_names(folder: Path, ending: str) -> set[str]:
    pattern = re.compile(rf"^(.+)_\d{{4}}{re.escape(ending)}$")
    return {m.group(1) for p in _listdir(folder) if (m := pattern.match(p.name))}


def _stems(folder: Path, ending: str) -> set[str]:
    return {p.name[: -len(ending)] for p in _listdir(folder) if p.name.endswith(ending)}


def _listdir(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _from_msd(json_path: Path, doc: dict) -> Dataset:
    root = json_path.parent
    channel_names = _ordered_names(doc["modality"])
    labels = {int(k): str(v) for k, v in doc["labels"].items()}
    cases = [Case(_case_name(entry["image"]), [root / entry["image"]], root / entry["label"])
             for entry in doc["training"]]
    return Dataset(cases, channel_names, _with_background(labels), _modality_of(channel_names), root)


def _from_case_list(path: Path, doc: list | dict, modality: str | None, labels: dict | None) -> Dataset:
    root = path.parent
    entries = doc.get("cases", doc.get("training")) if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a case list: expected a list of {{'image', 'label'}} entries "
                         "or an object with 'cases'.")
    meta = doc if isinstance(doc, dict) else {}
    cases = []
    for i, entry in enumerate(entries):
        images = entry.get("images", entry.get("image"))
        images = [images] if isinstance(images, str) else list(images or [])
        label = entry.get("label")
        name = entry.get("name") or _case_name(images[0] if images else f"case_{i:03d}")
        cases.append(Case(name, [root / p for p in images], root / label if label else None))
    channels = meta.get("channel_names")
    channel_names = _ordered_names(channels) if channels else _default_channels(cases, modality or meta.get("modality"))
    declared = labels or ({int(k): str(v) for k, v in meta["labels"].items()} if "labels" in meta else None)
    return _list_dataset(cases, channel_names, declared, modality or meta.get("modality"), root)


def _from_csv(path: Path, modality: str | None, labels: dict | None) -> Dataset:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        image_columns = [c for c in reader.fieldnames or [] if c == "image" or c.startswith("image_")]
        if not image_columns:
            raise ValueError(f"{path} has no 'image' column; columns: name (optional), image or image_<channel>, "
                             "label.")
        rows = list(reader)
    root = path.parent
    cases = []
    for i, row in enumerate(rows):
        images = [root / row[c] for c in image_columns]
        name = row.get("name") or _case_name(row[image_columns[0]] or f"case_{i:03d}")
        cases.append(Case(name, images, root / row["label"] if row.get("label") else None))
    named = [c[len("image_"):] for c in image_columns if c.startswith("image_")]
    channel_names = named if len(named) == len(image_columns) else _default_channels(cases, modality)
    return _list_dataset(cases, channel_names, labels, modality, root)


def _list_dataset(cases: list[Case], channel_names: list[str], labels: dict | None, modality: str | None,
                  root: Path) -> Dataset:
    declared = labels if labels else _labels_in_files(cases)
    return Dataset(cases, channel_names, _with_background(declared), modality or _modality_of(channel_names), root)


def _labels_in_files(cases: list[Case]) -> dict[int, str]:
    """Label values found in the label maps, named ``label_<value>`` (for lists that declare none)."""
    values: set[int] = set()
    for case in cases:
        if case.label_path is not None and case.label_path.is_file():
            values.update(int(v) for v in np.unique(io.read_label_image(case.label_path).image.array))
    return {v: f"label_{v}" for v in sorted(values - {0})}


def _default_channels(cases: list[Case], modality: str | None) -> list[str]:
    count = max((len(c.image_paths) for c in cases), default=1)
    if count == 1:
        return [modality or "image"]
    return [f"channel_{i}" for i in range(count)]


def _ordered_names(names: dict | list) -> list[str]:
    if isinstance(names, list):
        return [str(n) for n in names]
    return [str(names[k]) for k in sorted(names, key=int)]


def _with_background(labels: dict) -> dict[int, str]:
    labels = {int(k): str(v) for k, v in labels.items()}
    return dict(sorted({0: "background", **labels}.items()))


def _case_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _modality_of(channel_names: Sequence[str]) -> str:
    """CT, MR or XR guessed from channel names (nnU-Net's rule: a channel named CT gets CT normalisation)."""
    lower = [n.lower() for n in channel_names]
    if any(n in _CT_NAMES for n in lower):
        return "CT"
    if any(n in _XR_NAMES for n in lower):
        return "XR"
    if any(n.startswith(_MR_HINTS) for n in lower):
        return "MR"
    return "other"


# ---------------------------------------------------------------------------------------------------- reading


def read_channels(path: Path) -> list[Image]:
    """The channel images of one file: one for a 2D/3D image, one per volume for a 4D (MSD) image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return [io.read_image(path)]  # io raises the clear error for unreadable files
    if reader.GetDimension() == 4 and reader.GetSize()[3] > 1:
        volume = reader.Execute()
        return [Image.from_sitk(volume[:, :, :, t]) for t in range(volume.GetSize()[3])]
    return [io.read_image(path)]


def read_case(case: Case) -> tuple[list[Image], Image | None]:
    """All channel images of a case (4D files split) and its label map (None when it has none)."""
    images = [image for path in case.image_paths for image in read_channels(path)]
    label = io.read_label_image(case.label_path).image if case.label_path is not None else None
    return images, label


def load_cropped_case(case: Case, dataset: Dataset) -> CroppedCase:
    """Read a case and crop it to the non-zero bounding box of its channels (as nnU-Net does first)."""
    images, label = read_case(case)
    if len(images) != len(dataset.channel_names):
        raise ValueError(f"Case {case.name!r} has {len(images)} channel(s); the dataset declares "
                         f"{len(dataset.channel_names)} ({dataset.channel_names}). Run validate_dataset.")
    stack = np.stack([im.array.astype(np.float32, copy=False) for im in images])
    nonzero = np.any(stack != 0, axis=0)
    crop = preprocessing.nonzero_bbox(nonzero)
    return CroppedCase(
        name=case.name,
        images=np.ascontiguousarray(stack[(slice(None), *crop)]),
        label=None if label is None else np.ascontiguousarray(label.array[crop]),
        nonzero=nonzero[crop],
        spacing=images[0].spacing,
        shape_before_crop=images[0].shape,
        bbox=tuple((c.start, c.stop) for c in crop),
    )


# ---------------------------------------------------------------------------------------------------- validation


def validate_dataset(dataset: Dataset, allow_empty_labels: bool = False) -> ValidationReport:
    """Check every case and list every problem: missing or unreadable files, missing sequences, grids that
    differ between channels or between image and label, label values not declared, empty label maps."""
    report = ValidationReport(str(dataset.root or "(in memory)"), len(dataset.cases))
    if not dataset.cases:
        report.problems.append(Problem(None, "no_cases", "the dataset has no cases; add image/label pairs."))
    if 0 not in dataset.labels:
        report.problems.append(Problem(None, "labels", "the declared labels lack 0 (background)."))
    for case in dataset.cases:
        report.problems.extend(_case_problems(case, dataset, allow_empty_labels))
    return report


def ensure_valid(dataset: Dataset, allow_empty_labels: bool = False) -> ValidationReport:
    """Validate and raise `DatasetError` (a ValueError with the full report) unless the dataset is valid."""
    report = validate_dataset(dataset, allow_empty_labels)
    if not report.ok:
        raise DatasetError(report)
    return report


def _case_problems(case: Case, dataset: Dataset, allow_empty_labels: bool) -> list[Problem]:
    problems = [Problem(case.name, "missing_sequence", f"image file not found: {p}")
                for p in case.image_paths if not p.exists()]
    if case.label_path is None:
        problems.append(Problem(case.name, "missing_label", "the case has no label map; give one for training."))
    elif not case.label_path.exists():
        problems.append(Problem(case.name, "missing_file", f"label file not found: {case.label_path}"))
    images: list[Image] = []
    for path in case.image_paths:
        if path.exists():
            try:
                images.extend(read_channels(path))
            except (ValueError, OSError) as err:
                problems.append(Problem(case.name, "unreadable", f"{path}: {err}"))
    expected = len(dataset.channel_names)
    if not problems and len(images) != expected:
        problems.append(Problem(case.name, "missing_sequence",
                                f"{len(images)} channel(s) found, {expected} declared {dataset.channel_names}."))
    problems += [Problem(case.name, "grid_mismatch", f"channel {i} ({_grid(im)}) is not on the grid of "
                         f"channel 0 ({_grid(images[0])}); resample it onto channel 0.")
                 for i, im in enumerate(images[1:], start=1) if not im.same_grid(images[0])]
    if case.label_path is not None and case.label_path.exists():
        problems += _label_problems(case, dataset, images[0] if images else None, allow_empty_labels)
    return problems


def _label_problems(case: Case, dataset: Dataset, image: Image | None, allow_empty: bool) -> list[Problem]:
    try:
        label = io.read_label_image(case.label_path).image
    except (ValueError, OSError) as err:
        return [Problem(case.name, "unreadable", f"{case.label_path}: {err}")]
    problems = []
    if image is not None and not label.same_grid(image):
        problems.append(Problem(case.name, "grid_mismatch", f"label ({_grid(label)}) is not on the image grid "
                                f"({_grid(image)}); resample the label onto the image (nearest neighbour)."))
    values = {int(v) for v in np.unique(label.array)}
    undeclared = sorted(values - set(dataset.labels))
    if undeclared:
        problems.append(Problem(case.name, "undeclared_label", f"label values {undeclared} are not declared "
                                f"(declared: {sorted(dataset.labels)}); declare them or fix the label map."))
    if not allow_empty and not values - {0}:
        problems.append(Problem(case.name, "empty_label", "the label map has no foreground; segment the case or "
                                "remove it (or allow empty labels)."))
    return problems


def _grid(image: Image) -> str:
    return (f"size {image.size}, spacing {tuple(round(s, 4) for s in image.spacing)}, "
            f"origin {tuple(round(o, 2) for o in image.origin)}")


# ---------------------------------------------------------------------------------------------------- writing


def write_nnunet_dataset(
    folder: str | Path,
    cases: Sequence[tuple[Sequence[Image], Image]],
    channel_names: Sequence[str],
    labels: dict[int, str],
    names: Sequence[str] | None = None,
    modality: str | None = None,
    file_ending: str = ".nii.gz",
) -> Dataset:
    """Write cases (channel images, label map) as an nnU-Net v2 raw folder and return it as a `Dataset`.

    Used to export Slicer scene cases for training; refuses to write into a folder that already holds a
    dataset.json so no earlier export is mixed in.
    """
    folder = Path(folder)
    if (folder / "dataset.json").exists():
        raise ValueError(f"{folder} already holds a dataset; choose an empty or new folder.")
    labels = _with_background(labels)
    if len(set(labels.values())) != len(labels):
        raise ValueError(f"Label names must be unique; got {labels}.")
    names = list(names) if names is not None else [f"case_{i:03d}" for i in range(len(cases))]
    if len(names) != len(cases) or len(set(names)) != len(names):
        raise ValueError("Give one unique name per case.")
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for name, (images, label) in zip(names, cases, strict=True):
        if len(images) != len(channel_names):
            raise ValueError(f"Case {name!r} has {len(images)} image(s) for {len(channel_names)} channel name(s).")
        for c, image in enumerate(images):
            _write_image(folder / "imagesTr" / f"{name}_{c:04d}{file_ending}", image)
        _write_image(folder / "labelsTr" / f"{name}{file_ending}", label)
    doc = {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": {n: v for v, n in labels.items()},
        "numTraining": len(names),
        "file_ending": file_ending,
    }
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return load_dataset(folder, modality=modality)


def _write_image(path: Path, image: Image) -> None:
    with io.atomic_write(path) as tmp:
        sitk.WriteImage(image.to_sitk(), str(tmp), useCompression=True)


# ---------------------------------------------------------------------------------------------------- preprocessing


def preprocessing_key(plan: Plan) -> dict:
    """The part of a plan that determines preprocessed arrays (and so the cache key)."""
    spacing = list(plan.target_spacing[:2]) if plan.spatial_dims == 2 else list(plan.target_spacing)
    return {"spatial_dims": plan.spatial_dims, "spacing": spacing, "normalization": list(plan.normalization),
            "label_values": list(plan.label_values), "channels": len(plan.channel_names)}


def preprocess_case(cropped: CroppedCase, plan: Plan) -> PreprocessedCase:
    """Normalise at native resolution, then resample to the plan's spacing (nnU-Net's order of operations)."""
    if cropped.label is None:
        raise ValueError(f"Case {cropped.name!r} has no label map; training needs one.")
    channels = [preprocessing.normalize(ch, n["scheme"], n, cropped.nonzero if n.get("use_mask") else None)
                for ch, n in zip(cropped.images, plan.normalization, strict=True)]
    target = _case_target_spacing(cropped.spacing, plan)
    new_shape = preprocessing.target_shape(cropped.label.shape, cropped.spacing[::-1], target[::-1])
    image = preprocessing.resample(torch.from_numpy(np.stack(channels)), new_shape, "cubic").numpy()
    label = preprocessing.resample_labels(_to_class_indices(cropped.label, plan.label_values), new_shape)
    properties = {"original_spacing": list(cropped.spacing), "shape_before_crop": list(cropped.shape_before_crop),
                  "bbox": [list(b) for b in cropped.bbox], "shape_after_crop": list(cropped.label.shape)}
    return PreprocessedCase(cropped.name, image, label, target, _class_locations(label, cropped.name), properties)


def _case_target_spacing(spacing: tuple[float, float, float], plan: Plan) -> tuple[float, float, float]:
    """The plan's spacing; a 2D plan keeps each case's own slice spacing (it never resamples along z)."""
    if plan.spatial_dims == 2:
        return (plan.target_spacing[0], plan.target_spacing[1], spacing[2])
    return tuple(plan.target_spacing)


def _to_class_indices(label: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    lut = np.zeros(max(int(label.max(initial=0)), max(label_values)) + 1, dtype=np.uint8)
    lut[list(label_values)] = np.arange(len(label_values), dtype=np.uint8)
    return lut[label.astype(np.int64)]


def _class_locations(label: np.ndarray, name: str) -> dict[int, np.ndarray]:
    """Up to 10 000 (at least 1 %) random voxel coordinates of each foreground class (nnU-Net's sampler)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    locations = {}
    for c in np.unique(label):
        if c == 0:
            continue
        coords = np.argwhere(label == c).astype(np.int32)
        n = max(min(MAX_LOCATIONS_PER_CLASS, len(coords)), math.ceil(len(coords) * MIN_LOCATION_COVERAGE))
        locations[int(c)] = coords[np.sort(rng.choice(len(coords), n, replace=False))]
    return locations


def preprocess_dataset(
    dataset: Dataset, plan: Plan, cache_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> list[PreprocessedCase]:
    """Preprocess every case once and cache it; later calls (epochs, runs) load the cache instead.

    Each case is stored in ``cache_dir/<case>-<key>/`` where the key hashes the case's file paths,
    modification times and sizes and the plan's preprocessing, so editing a file or the plan re-runs it.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for i, case in enumerate(dataset.cases):
        entry = cache_dir / f"{_safe(case.name)}-{_cache_key(case, plan)}"
        if not (entry / "meta.json").is_file():
            _save_case(entry, preprocess_case(load_cropped_case(case, dataset), plan))
        result.append(_load_case(entry))
        if progress is not None:
            progress(i + 1, len(dataset.cases))
    return result


def _cache_key(case: Case, plan: Plan) -> str:
    files = []
    for p in (*case.image_paths, case.label_path):
        if p is not None:
            stat = p.stat()
            files.append([str(p.resolve()), stat.st_mtime_ns, stat.st_size])
    doc = {"version": CACHE_VERSION, "files": files, "preprocessing": preprocessing_key(plan)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _save_case(entry: Path, case: PreprocessedCase) -> None:
    """Write a cache entry into a temporary folder renamed into place, so a crash never leaves half a case."""
    tmp = entry.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{entry.name}")
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", case.image.astype(np.float32, copy=False))
        np.save(tmp / "label.npy", case.label)
        np.savez(tmp / "locations.npz", **{str(c): v for c, v in case.class_locations.items()})
        meta = {"name": case.name, "spacing": list(case.spacing), "properties": case.properties}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # another process (DDP rank) may have written it first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _load_case(entry: Path) -> PreprocessedCase:
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    with np.load(entry / "locations.npz") as npz:
        locations = {int(k): npz[k] for k in npz.files}
    return PreprocessedCase(
        name=meta["name"],
        image=np.load(entry / "image.npy", mmap_mode="r"),
        label=np.load(entry / "label.npy", mmap_mode="r"),
        spacing=tuple(meta["spacing"]),
        class_locations=locations,
        properties=meta["properties"],
    )
