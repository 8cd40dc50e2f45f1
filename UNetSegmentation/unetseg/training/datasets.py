"""Training datasets: the cases of a dataset read from three layouts, and written as an nnU-Net raw folder.

Layouts read by `load_dataset`:
- an nnU-Net v2 raw folder: ``dataset.json`` with ``channel_names``, ``labels`` (name → value) and
  ``file_ending``; images ``imagesTr/<case>_0000<ending>``, ``_0001`` … per channel; ``labelsTr/<case><ending>``;
- a Medical Segmentation Decathlon folder: ``dataset.json`` with ``modality``, ``labels`` (value → name) and
  ``training`` (``[{"image", "label"}]``); a 4D image holds all channels and is split into them;
- a list of cases, as JSON (a list of ``{"name"?, "image" or "images", "label"}``, or an object with ``cases``
  and optional ``channel_names``, ``labels`` {value: name} and ``modality``) or as CSV with columns
  ``name`` (optional), ``image`` or ``image_<channel name>`` (one column per channel, in order) and ``label``.
  Paths are relative to the list file. Undeclared labels are taken from the label maps.
Any format SimpleITK reads works for the images and label maps. `dataset_checks` validates a dataset,
`cache` preprocesses its cases for training.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unetseg import io
from unetseg.image import Image
from unetseg.inference.prepare import crop_box
from unetseg.inference.preprocessing import crop

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


@dataclass
class CroppedCase:
    """A case read and cropped to the bounding box of its non-zero image voxels (nnU-Net's crop)."""

    name: str
    images: np.ndarray  # (C, z, y, x) float32
    label: np.ndarray | None  # (z, y, x) label values
    spacing: tuple[float, float, float]  # (x, y, z)
    shape_before_crop: tuple[int, int, int]
    bbox: tuple[tuple[int, int], ...]  # (start, stop) per numpy axis


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
    box = crop_box(stack, "nonzero")
    return CroppedCase(
        name=case.name,
        images=np.ascontiguousarray(crop(stack, box)),
        label=None if label is None else np.ascontiguousarray(crop(label.array, box)),
        spacing=images[0].spacing,
        shape_before_crop=images[0].shape,
        bbox=tuple((c.start, c.stop) for c in box),
    )


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
