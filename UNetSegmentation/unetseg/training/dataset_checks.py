"""Dataset validation: one report listing every problem of a dataset before any training starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unetseg import io
from unetseg.image import Image
from unetseg.training.datasets import Case, Dataset, read_channels


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
