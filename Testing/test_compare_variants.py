"""benchmarks/compare_variants.py: the synthetic comparison end to end, the fairness of its jobs, its noise rule."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import compare_variants  # noqa: E402 (a benchmark script, found through the path above)
import variant_report  # noqa: E402
import variant_runs  # noqa: E402
import variant_settings  # noqa: E402

CELL = re.compile(r"^(\d+\.\d+) ± (\d+\.\d+)$")


def _tables(markdown: str) -> dict[str, list[list[str]]]:
    """Every Markdown table under a `## … (`key`)` heading: rows of cells, the header first."""
    tables: dict[str, list[list[str]]] = {}
    key = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = re.match(r"^## .*\(`(\w+)`\)$", line)
            key = heading.group(1) if heading else None
        elif key and line.startswith("| ") and not line.startswith("|---"):
            tables.setdefault(key, []).append([c.strip() for c in line.strip("|").split("|")])
    return tables


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and width > 100 and height > 100


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One synthetic comparison (two variants, both settings, seconds of training each) and its outputs."""
    root = tmp_path_factory.mktemp("variants")
    out, work = root / "out", root / "work"
    cmd = [sys.executable, str(BENCHMARKS / "compare_variants.py"), "--synthetic", "--variants", "unet", "nnunet",
           "--budget-min", "0.1", "--out-dir", str(out), "--work-dir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, work, json.loads((out / variant_report.RESULTS).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_synthetic_comparison_writes_a_well_formed_table_and_both_plots(synthetic_run):
    out, _, results = synthetic_run
    markdown = (out / variant_report.MARKDOWN).read_text(encoding="utf-8")
    tables = _tables(markdown)
    assert set(tables) == {"synthetic_3d", "synthetic_2d"}
    for key, rows in tables.items():
        header, body = rows[0], rows[1:]
        regions = list(results["settings"][key]["regions"])
        assert [f"{r} Dice" for r in regions] == [h for h in header if h.endswith(" Dice")]
        assert [row[0] for row in body] == ["unet", "nnunet"]
        for row in body:
            assert len(row) == len(header)
            for name, cell in zip(header, row, strict=True):
                if name.endswith(" Dice"):
                    mean, std = map(float, CELL.match(cell).groups())
                    assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert "synthetic_2d" in results["settings"] and results["settings"]["synthetic_2d"]["summary"]["unet"][
        "pixel_error"]["mean"] is not None
    assert "python benchmarks/compare_variants.py --synthetic" in markdown and "0.1 min" in markdown
    assert "Synthetic phantoms" in markdown  # the report says these numbers compare nothing
    for plot in (variant_report.DICE_PLOT, variant_report.CURVES_PLOT):
        assert _is_png(out / plot), plot
        assert f"]({plot})" in markdown


@pytest.mark.slow
def test_table_cell_is_recomputed_from_the_saved_predictions(synthetic_run):
    """The table's numbers come from metrics.compute_metrics on the predictions the predictor wrote."""
    from unetseg.evaluation.metrics import compute_metrics

    out, work, results = synthetic_run
    section = results["settings"]["synthetic_3d"]
    region, values = next(iter(section["regions"].items()))
    dices = []
    for case in section["eval_cases"]:
        pred = sitk.ReadImage(str(variant_runs.prediction_path(
            compare_variants.prediction_dir(work / "synthetic_3d", "unet", 0), case)))
        ref = sitk.ReadImage(str(work / "synthetic_3d" / "dataset" / "labelsTr" / f"{case}.nii.gz"))
        p = np.isin(sitk.GetArrayFromImage(pred), values)
        r = np.isin(sitk.GetArrayFromImage(ref), values)
        dices.append(compute_metrics(p, r, [1], ref.GetSpacing()[::-1])[1]["dice"])
    assert section["summary"]["unet"]["dice"][region]["mean"] == pytest.approx(np.mean(dices), abs=1e-9)
    report = (out / variant_report.MARKDOWN).read_text(encoding="utf-8")
    row = next(r for r in _tables(report)["synthetic_3d"] if r[0] == "unet")
    header = _tables((out / variant_report.MARKDOWN).read_text(encoding="utf-8"))["synthetic_3d"][0]
    cell = row[header.index(f"{region} Dice")]
    assert float(CELL.match(cell).group(1)) == pytest.approx(np.mean(dices), abs=5e-4)


@pytest.mark.slow
def test_runs_record_budget_iterations_and_memory(synthetic_run):
    _, _, results = synthetic_run
    for run in results["settings"]["synthetic_3d"]["runs"]:
        assert run["iterations"] >= 1 and run["parameters"] > 0 and run["peak_rss_mb"] > 0
        assert run["inference_s_per_case"] > 0 and any(e["stage"] == "epoch" for e in run["curve"])
    provenance = results["settings"]["synthetic_3d"]["provenance"]
    assert provenance["options"]["budget_min"] == 0.1 and results["synthetic"] is True
    assert provenance["command"].startswith("python benchmarks/compare_variants.py --synthetic")
    assert "--out-dir" not in provenance["command"] and "--work-dir" not in provenance["command"]
    assert provenance["hardware"]["cores"] >= 1 and provenance["hardware"]["gpu"] is None


@pytest.mark.slow
def test_report_only_redraws_the_same_report(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    assert compare_variants.main(["--report-only", str(out / variant_report.RESULTS), "--out-dir", str(tmp_path)]) == 0
    redrawn = (tmp_path / variant_report.MARKDOWN).read_text(encoding="utf-8")
    assert redrawn == (out / variant_report.MARKDOWN).read_text(encoding="utf-8")
    assert _is_png(tmp_path / variant_report.CURVES_PLOT)


@pytest.mark.slow
def test_report_only_merges_settings_run_separately(synthetic_run, tmp_path):
    """Settings run by separate invocations (e.g. one GPU lease each) merge into one report, each with its own
    provenance; a setting given twice, or synthetic mixed with real results, is refused."""
    _, _, results = synthetic_run
    parts = []
    for key, section in results["settings"].items():
        section = {**section, "provenance": {**section["provenance"], "command": f"python run-{key}"}}
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**results, "settings": {key: section}}), encoding="utf-8")
        parts.append(path)
    assert compare_variants.main(["--report-only", *map(str, parts), "--out-dir", str(tmp_path / "merged"),
                                  "--note", "synthetic_2d=seed 0 kept from another machine"]) == 0
    merged = (tmp_path / "merged" / variant_report.MARKDOWN).read_text(encoding="utf-8")
    assert set(_tables(merged)) == {"synthetic_3d", "synthetic_2d"}
    assert "python run-synthetic_3d\npython run-synthetic_2d" in merged
    assert merged.count("command `python run-") == 2  # each setting names the command that made it
    assert merged.count("- Note: seed 0 kept from another machine") == 1
    assert compare_variants.main(["--report-only", str(parts[0]), "--out-dir", str(tmp_path),
                                  "--note", "isbi=not there"]) == 2
    assert compare_variants.main(["--report-only", str(parts[0]), str(parts[0]), "--out-dir", str(tmp_path)]) == 2
    real = json.loads(parts[1].read_text(encoding="utf-8")) | {"synthetic": False}
    parts[1].write_text(json.dumps(real), encoding="utf-8")
    with pytest.raises(ValueError, match="synthetic and real"):
        variant_report.merge_documents([(str(p), json.loads(p.read_text(encoding="utf-8"))) for p in parts])


def _args(*extra: str) -> argparse.Namespace:
    return compare_variants.parse_args(["--synthetic", *extra])


def test_jobs_differ_only_in_variant_and_width(tmp_path):
    """Same data, plan, budget, seeds and options for every variant; V-Net only in 3D; equal base features."""
    args = _args("--seeds", "0", "1", "--budget-min", "2", "--workers", "3")
    for setting in (variant_settings.synthetic_3d(1, 1), variant_settings.synthetic_2d(1, 1)):
        jobs = compare_variants.jobs_for(setting, tmp_path / "ds", tmp_path / "plans.json", tmp_path, args)
        variants = {job.variant for job in jobs}
        assert variants == (set(compare_variants.VARIANTS_3D) if setting.spatial_dims == 3
                            else set(compare_variants.VARIANTS_2D))
        assert len(jobs) == 2 * len(variants)
        shared = [{k: v for k, v in job.train_options.items() if k not in ("width", "name")} for job in jobs]
        assert all(s == shared[0] for s in shared)
        assert shared[0]["num_workers"] == 3
        assert {(job.dataset, job.plans, job.budget_min, tuple(job.eval_cases)) for job in jobs} == {
            (str(tmp_path / "ds"), str(tmp_path / "plans.json"), 2.0, (setting.evaluate[0].name,))}
        for job in jobs:
            first = compare_variants.FIRST_LEVEL_FEATURES[job.variant]
            assert job.train_options["width"] * first == args.base_features
        assert len({job.prediction_dir for job in jobs}) == len(jobs)


def test_missing_shared_data_exits_nonzero(tmp_path, capsys):
    code = compare_variants.main(["--settings", "isbi", "--data-root", str(tmp_path / "absent"),
                                  "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert "--synthetic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_score_unites_labels_into_regions_and_counts_pixel_errors():
    pred, ref = np.array([[[0, 1, 2, 4]]]), np.array([[[0, 1, 4, 4]]])
    out = variant_runs.score(pred, ref, (1.0, 1.0, 1.0), {"tumour": [1, 2, 4], "enhancing": [4]}, "enhancing")
    assert out["regions"]["tumour"]["dice"] == 1.0 and out["regions"]["tumour"]["hd95"] == 0.0
    assert out["regions"]["enhancing"]["dice"] == pytest.approx(2 / 3)
    assert out["pixel_error"] == 0.25
    empty = variant_runs.score(np.zeros((1, 2, 2)), np.ones((1, 2, 2)), (1.0, 1.0, 1.0), {"r": [1]}, None)
    assert empty["regions"]["r"] == {"dice": 0.0, "hd95": None, "flag": "pred_empty"} and "pixel_error" not in empty


def test_predictions_are_mapped_back_to_the_dataset_label_values():
    from types import SimpleNamespace

    from unetseg.image import Label

    package = SimpleNamespace(labels=[Label(1, "oedema", (1, 0, 0)), Label(2, "enhancing", (0, 1, 0))],
                              provenance={"source_label_values": {"oedema": 2, "enhancing": 4}})
    assert variant_runs.source_values(package).tolist() == [0, 2, 4]


def _run(variant: str, seed: int, dices: list[float]) -> dict:
    return {"variant": variant, "seed": seed, "parameters": 10, "patch_size": [8, 8], "iterations": 5, "epochs": 1,
            "train_wall_s": 1.0, "trainer_wall_s": 1.0, "train_cpu_s": 1.0, "inference_s_per_case": 0.1,
            "peak_rss_mb": 1.0, "peak_gpu_mb": None,
            "cases": [{"regions": {"r": {"dice": d, "hd95": None if d == 0 else 1.0}}} for d in dices]}


def test_summary_statistics_and_seed_spread():
    s = variant_report.summarise([_run("a", 0, [0.5, 0.7]), _run("a", 1, [0.6, 0.0])], ["r"], pixel_error=False)
    assert s["dice"]["r"]["mean"] == pytest.approx(0.45)
    assert s["dice"]["r"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.6, 0.0], ddof=1))
    assert s["hd95"]["r"] == {"mean": 1.0, "std": 0.0, "n": 3, "excluded": 1}
    assert s["seed_spread"]["r"] == pytest.approx(0.6 - 0.3)


def test_ranking_claims_no_order_within_the_error_bars():
    def summary(dices: list[float]) -> dict:
        return variant_report.summarise([_run("x", 0, dices)], ["r"], pixel_error=False)

    close = {"a": summary([0.80, 0.60, 0.70]), "b": summary([0.75, 0.62, 0.66])}
    text = variant_report.ranking_statement(close, "r")
    assert "Within noise" in text and "standard errors" in text and "Lower by more" not in text
    apart = {"a": summary([0.90, 0.91, 0.92]), "b": summary([0.20, 0.21, 0.22])}
    text = variant_report.ranking_statement(apart, "r")
    assert "highest mean Dice a 0.910" in text and "Lower by more than that: b 0.210" in text
    assert "Within noise" not in text
    two_cases = {"a": summary([0.90, 0.91]), "b": summary([0.20, 0.21])}
    text = variant_report.ranking_statement(two_cases, "r")
    assert "cannot be estimated, so no ranking is claimed" in text and "Lower by more" not in text
