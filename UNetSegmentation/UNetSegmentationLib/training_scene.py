"""Training and evaluation from the scene: segmentations → an nnU-Net v2 raw dataset, metrics and curves as tables.

The exported dataset is what `unetseg train` reads; the metrics table compares two segmentations segment by
segment (same name, same structure); the training curves come from the trainer's JSON progress events.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from unetseg.evaluation.metrics import compute_metrics
from UNetSegmentationLib.scene_io import geometryVolume, volumeModality, writeLabelArray, writeVolume

TRAINING_FILE_ENDING = ".nrrd"
# Numbers in the trainer's progress events that are not curves to plot against the epoch.
_NOT_CURVES = {"fraction", "iteration", "eta_s"}


# --- nnU-Net v2 dataset from scene cases ----------------------------------------------------------------


def exportTrainingCases(
    segmentationNodes: Sequence[Any],
    outputFolder: str | os.PathLike,
    volumes: Sequence[Any] | None = None,
    channelName: str | None = None,
) -> Path:
    """Write scene cases as an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/); return its folder.

    Each segmentation is paired with `volumes[i]`, or with the volume its geometry comes from. Labels are the
    segment names (same name = same label across cases), numbered in order of appearance. `channelName`
    defaults to the modality guess ("CT" selects CT normalisation in the planner).
    """
    if not segmentationNodes:
        raise ValueError("Select at least one segmentation to train on.")
    pairs = _trainingPairs(segmentationNodes, volumes)
    labelValues = _labelValuesFromNames(segmentationNodes)
    folder = Path(outputFolder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index, (segmentationNode, volume) in enumerate(pairs):
        case = f"case_{index:03d}"
        writeVolume(volume, folder / "imagesTr" / f"{case}_0000{TRAINING_FILE_ENDING}")
        labelArray = _labelArray(segmentationNode, volume, labelValues)
        writeLabelArray(labelArray, volume, folder / "labelsTr" / f"{case}{TRAINING_FILE_ENDING}")
    channel = channelName or volumeModality(pairs[0][1]).modality or "image"
    dataset = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, **labelValues},
        "numTraining": len(pairs),
        "file_ending": TRAINING_FILE_ENDING,
        "name": "Slicer scene cases",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return folder


def _trainingPairs(segmentationNodes: Sequence[Any], volumes: Sequence[Any] | None) -> list[tuple[Any, Any]]:
    """(segmentation, volume) pairs: the given volumes, else each segmentation's geometry volume."""
    if volumes is not None and len(volumes) != len(segmentationNodes):
        raise ValueError(
            f"{len(segmentationNodes)} segmentations but {len(volumes)} volumes; give one volume per segmentation."
        )
    pairs = []
    for index, segmentationNode in enumerate(segmentationNodes):
        volume = volumes[index] if volumes is not None else geometryVolume(segmentationNode)
        if volume is None:
            raise ValueError(
                f"'{segmentationNode.GetName()}' is not linked to a volume; select its source volume in Segment "
                "Editor once (or pass volumes=…)."
            )
        pairs.append((segmentationNode, volume))
    return pairs


def _labelValuesFromNames(segmentationNodes: Sequence[Any]) -> dict[str, int]:
    """Label values 1, 2, … for the segment names, in order of first appearance across the cases."""
    names: dict[str, int] = {}
    for node in segmentationNodes:
        segmentation = node.GetSegmentation()
        for segmentId in segmentation.GetSegmentIDs():
            names.setdefault(segmentation.GetSegment(segmentId).GetName(), len(names) + 1)
    if not names:
        raise ValueError("The selected segmentations have no segments to learn.")
    return names


def _labelArray(segmentationNode: Any, volume: Any, labelValues: dict[str, int]) -> np.ndarray:
    """The segmentation as one label array on the volume's grid (later segments win where they overlap)."""
    dims = volume.GetImageData().GetDimensions()
    dtype = np.uint8 if len(labelValues) < 256 else np.uint16
    labels = np.zeros(dims[::-1], dtype=dtype)
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in segmentation.GetSegmentIDs():
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume) > 0
        labels[mask] = labelValues[segmentation.GetSegment(segmentId).GetName()]
    return labels


# --- evaluation table ----------------------------------------------------------------------------------


def evaluationTable(segmentationNode: Any, referenceSegmentationNode: Any, referenceVolume: Any = None) -> Any:
    """A table node with Dice, IoU, HD95 (mm) … per segment name present in both segmentations.

    Both are sampled on `referenceVolume`'s grid (default: the reference segmentation's geometry volume).
    """
    volume = referenceVolume or geometryVolume(referenceSegmentationNode) or geometryVolume(segmentationNode)
    if volume is None:
        raise ValueError("Pass referenceVolume: neither segmentation says which volume its geometry is from.")
    pairs = _segmentsByName(segmentationNode, referenceSegmentationNode)
    if not pairs:
        raise ValueError(
            f"'{segmentationNode.GetName()}' and '{referenceSegmentationNode.GetName()}' share no segment name; "
            "rename segments so that the structures to compare have the same name."
        )
    spacingZyx = tuple(reversed(volume.GetSpacing()))
    rows = []
    for name, (predId, refId) in pairs.items():
        pred = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, predId, volume) > 0
        ref = slicer.util.arrayFromSegmentBinaryLabelmap(referenceSegmentationNode, refId, volume) > 0
        rows.append((name, compute_metrics(pred.astype(np.uint8), ref.astype(np.uint8), [1], spacingZyx)[1]))
    title = f"{segmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}"
    return _metricsTable(title, rows)


def _segmentsByName(a: Any, b: Any) -> dict[str, tuple[str, str]]:
    """Segment IDs of `a` and `b` paired by segment name, in `b`'s order."""
    idsA = {a.GetSegmentation().GetSegment(i).GetName(): i for i in a.GetSegmentation().GetSegmentIDs()}
    pairs = {}
    for segmentId in b.GetSegmentation().GetSegmentIDs():
        name = b.GetSegmentation().GetSegment(segmentId).GetName()
        if name in idsA:
            pairs[name] = (idsA[name], segmentId)
    return pairs


def _metricsTable(title: str, rows: list[tuple[str, dict]]) -> Any:
    """A table node: one row per segment, one column per metric (distances in mm)."""
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(title))
    names = vtk.vtkStringArray()
    names.SetName("Segment")
    for name, _ in rows:
        names.InsertNextValue(name)
    table.AddColumn(names)
    metricNames = list(dict.fromkeys(k for _, metrics in rows for k in metrics))
    for metric in metricNames:
        values = [metrics.get(metric) for _, metrics in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        column.SetName(metric)
        for value in values:
            column.InsertNextValue(float(value) if numeric else ("" if value is None else str(value)))
        table.AddColumn(column)
        if any(word in metric.lower() for word in ("hd", "assd", "distance")):
            table.SetColumnUnitLabel(metric, "mm")
    return table


# --- training curves -----------------------------------------------------------------------------------


def curvesTable(events: Sequence[dict], tableNode: Any = None) -> Any:
    """Fill a table node (created if None) with the per-epoch numbers (loss, validation Dice …) of the events."""
    rows = _epochRows(events)
    table = tableNode or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Training curves")
    columns = ["epoch", *sorted({k for row in rows for k in row} - {"epoch"})]
    arrays = {c: np.array([row.get(c, math.nan) for row in rows], dtype=float) for c in columns}
    slicer.util.updateTableFromArray(table, [arrays[c] for c in columns], columns)
    return table


def curvesPlot(tableNode: Any, chartNode: Any = None) -> Any:
    """A plot chart (created if None) with one line per training-curves column against the epoch."""
    scene = slicer.mrmlScene
    chart = chartNode or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Training curves")
    chart.SetXAxisTitle("epoch")
    plotted = {chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
    for index in range(1, tableNode.GetNumberOfColumns()):
        column = tableNode.GetColumnName(index)
        if column in plotted:
            continue
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
        series.SetAndObserveTableNodeID(tableNode.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetUniqueColor()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def _epochRows(events: Sequence[dict]) -> list[dict]:
    """One row of numbers per epoch from the trainer's progress events (the last event of each epoch)."""
    rows: dict[float, dict] = {}
    for event in events:
        if not isinstance(event.get("epoch"), (int, float)):
            continue
        numbers = {
            k: float(v)
            for k, v in event.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_CURVES
        }
        rows.setdefault(numbers["epoch"], {}).update(numbers)
    return [rows[epoch] for epoch in sorted(rows)]
