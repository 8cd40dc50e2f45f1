"""A cohort's progress: a progress bar with counts and ETA on a terminal (tqdm), or JSON-lines ``progress``
events with ``--progress json`` (stage ``cohort``; fields ``case``, ``status``, ``succeeded``, ``skipped``,
``failed``, ``eta_s``). A failed case is a line above the bar, or a ``log`` event."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from unetseg.jobs.cohort_inputs import Case
from unetseg.jobs.runner import Job

_COUNTED = {"done": "succeeded", "failed": "failed", "skipped": "skipped"}


class CohortProgress:
    """Counts of a cohort's cases as they come back, shown as a bar or reported as events."""

    def __init__(self, job: Job, total: int, counts: Counter) -> None:
        self.job, self.total, self.counts = job, total, counts
        self._start, self._already = time.monotonic(), sum(counts.values())
        self._bar: Any = None
        if job.emitter is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=self._already, unit="case", desc="segmenting", file=sys.stderr,
                             disable=None, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
            self._bar.set_postfix_str(self._postfix(), refresh=True)
        self._report(None, None, f"{total} cases: {counts['skipped']} already complete, "
                                 f"{total - self._already} to segment")  # fmt: skip

    def advance(self, case: Case, record: dict[str, Any]) -> None:
        """Count a case that came back (a cancelled one is not counted: the rerun does it)."""
        status = record["status"]
        if status in _COUNTED:
            self.counts[_COUNTED[status]] += 1
        if status == "failed":
            line = f"{case.id}: failed: {record.get('error')}"
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            else:
                self.job.log(line)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(1 if status in _COUNTED else 0)
        self._report(case.id, status, f"{case.id}: {status}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _postfix(self) -> str:
        return f"ok={self.counts['succeeded']} skipped={self.counts['skipped']} failed={self.counts['failed']}"

    def _report(self, case: str | None, status: str | None, message: str) -> None:
        """One JSON ``progress`` event (nothing without ``--progress json``: the bar shows the same)."""
        if self.job.emitter is None:
            return
        finished = sum(self.counts.values())
        worked = finished - self._already
        elapsed = time.monotonic() - self._start
        eta = round(elapsed / worked * (self.total - finished), 1) if worked else None
        self.job.emitter(finished / self.total if self.total else 1.0, "cohort", message, case=case, status=status,
                         succeeded=self.counts["succeeded"], skipped=self.counts["skipped"],
                         failed=self.counts["failed"], eta_s=eta)  # fmt: skip
