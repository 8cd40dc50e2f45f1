"""Ship a case the demo's CT model never saw: ct-spleen's held-out CT (another patient) as a bundled sample.

`unetseg demo` and the Slicer self-test report the Dice on it next to the training case's, so the demo shows
what a model trained on one subject does on another. The case is the one the model card measures
(the test case of group ``ts`` in `bundled_ct_cases.ct_spleen_groups`): TotalSegmentator's example_ct_sm with
TotalSegmentator's spleen (a model output, not a manual label). Writes two NIfTI files into SampleData and the
sample's entry in samples.json:

    python benchmarks/heldout_sample.py [--shared-data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundled_ct_cases  # sibling scripts
import bundled_datasets
import bundled_models

MODEL = "ct-spleen"
ENTRY = {
    "name": "ts_example_ct_sm",
    "title": "CT upper abdomen of another patient (TotalSegmentator example, 3 mm)",
    "modality": "CT",
    "images": ["ts_example_ct_sm.nii.gz"],
    "reference": "ts_example_ct_sm_spleen.nii.gz",
    "model": MODEL,
    "heldout_for": [MODEL],
    "licence": bundled_ct_cases.TS_LICENCE,
    "attribution": "example_ct_sm.nii.gz from TotalSegmentator's test files (github.com/wasserth/TotalSegmentator, "
    "tests/reference_files, Apache-2.0); reference = TotalSegmentator's own spleen (model output, not manual). "
    "Wasserthal J. et al., Radiology: AI 2023. Never seen by the bundled ct-spleen model.",
}


def write_heldout_sample(shared: Path) -> list[Path]:
    """Write the held-out CT and its spleen label into SampleData and add (or refresh) its samples.json entry."""
    sample_dir = bundled_datasets.SAMPLE_DIR
    ts = next(g for g in bundled_ct_cases.ct_spleen_groups(shared) if g.key == "ts")
    case = next(c for c in ts.test if c.name == "example_ct_sm")
    paths = [sample_dir / ENTRY["images"][0], sample_dir / ENTRY["reference"]]
    for image, path in zip((case.image, case.label), paths, strict=True):
        sitk.WriteImage(image, str(path), True)
    doc = json.loads((sample_dir / "samples.json").read_text(encoding="utf-8"))
    doc["samples"] = [s for s in doc["samples"] if s["name"] != ENTRY["name"]] + [ENTRY]
    bundled_models.write_samples_index(doc)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=bundled_datasets.DEFAULT_DATA)
    args = parser.parse_args(argv)
    for path in write_heldout_sample(args.shared_data):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
