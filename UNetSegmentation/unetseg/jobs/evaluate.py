"""The `unetseg evaluate` job: score a folder of predictions against references and print the summary."""

from __future__ import annotations

import sys

from unetseg.evaluation.report import evaluate_folders, format_summary


def run_evaluate(pred_dir: str, ref_dir: str, out_csv: str | None) -> int:
    """`unetseg evaluate`: print the summary; a clear message and exit code 2 on bad input."""
    try:
        summary = evaluate_folders(pred_dir, ref_dir, out_csv)
    except (ValueError, OSError) as err:
        print(f"unetseg evaluate: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0
