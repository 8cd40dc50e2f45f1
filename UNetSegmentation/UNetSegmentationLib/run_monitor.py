"""The panel's running jobs: progress bars, status lines and log of a segmentation and a training run, and the
live training curves.

Each run is a `BackgroundRun` of the logic, polled on the tick of a timer the widget owns, so Slicer stays
responsive. Plain Python over the panel's widgets: it imports no Qt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import slicer
from slicer.i18n import tr as _

from unetseg.jobs.process import BackgroundRun

SEGMENT, TRAIN = "segment", "train"


class RunMonitor:
    """Tracks the panel's runs by kind ("segment" / "train"), at most one of each, and shows how they go.

    `onSucceeded(kind, run, elapsedSeconds)` finishes a run that succeeded and returns the message to show;
    `onChanged()` is called when a run starts or ends (the widget updates its buttons).
    """

    def __init__(
        self,
        ui: Any,
        logic: Any,
        timer: Any,
        onSucceeded: Callable[[str, BackgroundRun, float], str],
        onChanged: Callable[[], None],
    ) -> None:
        self.ui = ui
        self.logic = logic
        self._timer = timer
        self._timer.connect("timeout()", self.poll)
        self._onSucceeded = onSucceeded
        self._onChanged = onChanged
        self._runs: dict[str, BackgroundRun] = {}
        self._runStarts: dict[str, float] = {}
        self._curves: tuple[Any, Any] = (None, None)  # training-curves table and chart
        self._curvesDirty = False

    def running(self, kind: str) -> bool:
        """True while a run of this kind is going."""
        return kind in self._runs

    def cancel(self, kind: str) -> None:
        """Cancel the run of this kind, if any (it writes nothing once cancelled)."""
        if kind in self._runs:
            self._runs[kind].cancel()

    def cancelAll(self) -> None:
        """Cancel every run and stop polling (module unload or application exit)."""
        for run in list(self._runs.values()):
            run.cancel()
        self._timer.stop()

    def forgetCurves(self) -> None:
        """The next training curves go into a new table and chart."""
        self._curves = (None, None)

    def track(self, kind: str, run: BackgroundRun, message: str) -> None:
        """Show a run that has just started and poll it until it ends."""
        self._runs[kind] = run
        self._runStarts[kind] = time.monotonic()
        bar = self._progressBar(kind)
        bar.setRange(0, 0)  # busy until the first fraction arrives
        bar.show()
        self._statusLabel(kind).text = message
        self.appendLog(message)
        self._timer.start()
        self._onChanged()

    def poll(self) -> None:
        """Timer tick: forward events, finish the runs that ended, refresh the training curves."""
        for kind, run in list(self._runs.items()):
            if not run.poll():
                del self._runs[kind]
                self._finish(kind, run)
        if self._curvesDirty and TRAIN in self._runs:
            self.updateCurves(self._runs[TRAIN])
        if not self._runs:
            self._timer.stop()

    def onEvent(self, kind: str, event: dict) -> None:
        """One JSON event of a run: progress bar, status line, log."""
        message = event.get("message") or ""
        stage = event.get("stage") or ""
        if event.get("type") == "progress":
            bar = self._progressBar(kind)
            fraction = event.get("fraction")
            if fraction is None:
                bar.setRange(0, 0)
            else:
                bar.setRange(0, 1000)
                bar.value = round(1000 * fraction)
                bar.format = f"{stage} %p%"
            if message:
                self._statusLabel(kind).text = f"{stage}: {message}" if stage else message
            self._curvesDirty = self._curvesDirty or "epoch" in event
        elif message:
            prefix = _("Error: ") if event.get("type") == "error" else ""
            self.appendLog(f"{prefix}[{stage}] {message}" if stage else prefix + message)

    def updateCurves(self, run: BackgroundRun) -> None:
        """Loss and validation Dice per epoch, in a table and a plot shown in the layout."""
        self._curvesDirty = False
        table, chart = self._curves
        if table is not None and table.GetScene() is None:
            table, chart = None, None
        table = self.logic.trainingCurves(run, table)
        if table.GetNumberOfRows() == 0:
            return
        firstTime = chart is None
        chart = self.logic.trainingPlot(table, chart)
        if firstTime:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        self._curves = (table, chart)

    def appendLog(self, text: str) -> None:
        """A line in the panel's log box."""
        self.ui.logTextEdit.appendPlainText(text)

    def _finish(self, kind: str, run: BackgroundRun) -> None:
        self._progressBar(kind).hide()
        elapsed = time.monotonic() - self._runStarts.pop(kind, time.monotonic())
        if run.succeeded:
            message = self._onSucceeded(kind, run, elapsed)
        elif run.cancelled:
            message = _("Cancelled; nothing was changed.")
        else:
            message = _("Failed: {error}").format(error=run.error)
            slicer.util.errorDisplay(message, windowTitle=_("U-Net Segmentation"))
        self._statusLabel(kind).text = message
        self.appendLog(message)
        self._onChanged()

    def _progressBar(self, kind: str) -> Any:
        return self.ui.progressBar if kind == SEGMENT else self.ui.trainProgressBar

    def _statusLabel(self, kind: str) -> Any:
        return self.ui.statusLabel if kind == SEGMENT else self.ui.trainStatusLabel
