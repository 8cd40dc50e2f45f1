"""Ship the demo's pair of CT cases: one its model trained on, one it never saw.

`unetseg demo` and the Slicer self-test segment a bundled sample with its model and then each sample marked
``heldout_for`` that model, reporting the two Dice side by side (`unetseg.samples.showcase`). Since issue 16 the
ct-spleen model trains on both CT patients, so the pair is ct-abdomen-fast's: TotalSegmentator's example_ct_sm
(the patient it trains on; written here with TotalSegmentator's spleen, a model output, not a manual label) and
MSD spleen2 (another patient, manual spleen label, never in ct-abdomen-fast's training data: its card's held-out
case). Both references label the spleen only (``reference_labels``). Writes two NIfTI files into SampleData and
the two samples' entries in samples.json:

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

MODEL = "ct-abdomen-fast"
UNSEEN = "spleen2"  # the sample (MSD spleen2, in samples.json) that MODEL never saw
ENTRY = {
    "name": "ts_example_ct_sm",
    "title": "CT upper abdomen (TotalSegmentator example, 3 mm)",
    "modality": "CT",
    "images": ["ts_example_ct_sm.nii.gz"],
    "reference": "ts_example_ct_sm_spleen.nii.gz",
    "reference_labels": ["spleen"],
    "case": "example_ct_sm",  # the case's name in the bundled models' training data
    "model": MODEL,
    "licence": bundled_ct_cases.TS_LICENCE,
    "attribution": "example_ct_sm.nii.gz from TotalSegmentator's test files (github.com/wasserth/TotalSegmentator, "
    "tests/reference_files, Apache-2.0); reference = TotalSegmentator's own spleen (model output, not manual). "
    "Wasserthal J. et al., Radiology: AI 2023. A training case of the bundled CT models.",
}


def write_heldout_sample(shared: Path) -> list[Path]:
    """Write the TotalSegmentator CT and its spleen label into SampleData, add (or refresh) its samples.json entry
    and mark spleen2 as the case MODEL never saw."""
    sample_dir = bundled_datasets.SAMPLE_DIR
    ts = next(g for g in bundled_ct_cases.ct_spleen_groups(shared) if g.key == "ts")
    case = next(c for c in ts.test if c.name == "example_ct_sm")
    paths = [sample_dir / ENTRY["images"][0], sample_dir / ENTRY["reference"]]
    for image, path in zip((case.image, case.label), paths, strict=True):
        sitk.WriteImage(image, str(path), True)
    doc = json.loads((sample_dir / "samples.json").read_text(encoding="utf-8"))
    doc["samples"] = [s for s in doc["samples"] if s["name"] != ENTRY["name"]] + [ENTRY]
    unseen = next(s for s in doc["samples"] if s["name"] == UNSEEN)
    unseen.update(reference_labels=["spleen"], heldout_for=[MODEL])
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
