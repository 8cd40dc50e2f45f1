"""A label map into a segmentation node: named, coloured segments in one import, rollback, edit fingerprints.

Segments named like the model's labels replace the old ones in their place; an import that fails half-way
removes what it added. Each imported segment carries a fingerprint of its voxels, so that a later run can tell
which segments someone edited by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from unetseg.image import Label
from UNetSegmentationLib.scene_io import readLabelmap

MODEL_TAG = "UNetSegmentation.Model"
FINGERPRINT_TAG = "UNetSegmentation.Fingerprint"
LABEL_VALUE_TAG = "UNetSegmentation.LabelValue"
WARNINGS_TAG = "UNetSegmentation.Warnings"  # the last run's warnings about its input, one per line


def importLabelmap(
    labelmapPath: str | os.PathLike,
    referenceVolume: Any,
    labels: Sequence[Label],
    outputSegmentation: Any = None,
    showIn3D: bool = False,
    modelName: str = "",
) -> Any:
    """Import a label-map file on the reference volume's grid as named, coloured segments (one import).

    A new segmentation node is created when `outputSegmentation` is None (placed beside the volume in the
    subject hierarchy, under the same transform); in an existing node only the segments named like `labels`
    are replaced, keeping their place. Every label gets a segment, empty if absent. On error the scene is
    restored.
    """
    scene = slicer.mrmlScene
    if referenceVolume.GetScene() is not scene:
        raise RuntimeError("The input volume was removed from the scene while it was being segmented.")
    if outputSegmentation is not None and outputSegmentation.GetScene() is not scene:
        raise RuntimeError("The output segmentation was removed from the scene during the run.")
    labelImage = readLabelmap(Path(labelmapPath), referenceVolume)
    created = outputSegmentation is None
    segmentationNode = outputSegmentation or _newSegmentationNode(referenceVolume, modelName)
    before = list(segmentationNode.GetSegmentation().GetSegmentIDs())
    try:
        with slicer.util.NodeModify(segmentationNode):
            newIds = _importLabelSegments(labelImage, segmentationNode, referenceVolume, labels, modelName)
            _replaceOldSegments(segmentationNode, before, newIds)
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            segmentationNode.SetNodeReferenceID(
                segmentationNode.GetReferenceImageGeometryReferenceRole(), referenceVolume.GetID()
            )
        if showIn3D:
            segmentationNode.CreateClosedSurfaceRepresentation()
        if created:
            _placeBeside(segmentationNode, referenceVolume)
    except Exception:
        _rollback(segmentationNode, created, before)
        raise
    return segmentationNode


def editedSegments(segmentationNode: Any, labelNames: Sequence[str]) -> list[str]:
    """Names among `labelNames` whose segments changed since a model wrote them, or that no model wrote."""
    segmentation = segmentationNode.GetSegmentation()
    edited = []
    for segmentId in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(segmentId)
        if segment.GetName() not in labelNames:
            continue
        stored = _segmentTag(segment, FINGERPRINT_TAG)
        if stored is None or stored != _segmentFingerprint(segmentation, segmentId):
            edited.append(segment.GetName())
    return edited


def _newSegmentationNode(referenceVolume: Any, modelName: str) -> Any:
    """A new segmentation node named after the volume (and model), under the volume's transform."""
    name = f"{referenceVolume.GetName()} {modelName or 'segmentation'}"
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    return node


def _importLabelSegments(
    labelImage: Any, segmentationNode: Any, referenceVolume: Any, labels: Sequence[Label], modelName: str
) -> list[str]:
    """Import the label image once (one shared layer) and name/colour/tag a segment per label; return their IDs."""
    if segmentationNode.GetTransformNodeID() != referenceVolume.GetTransformNodeID():
        transform = vtk.vtkGeneralTransform()
        slicer.vtkSlicerSegmentationsModuleLogic.GetTransformBetweenRepresentationAndSegmentation(
            referenceVolume, segmentationNode, transform
        )
        slicer.vtkOrientedImageDataResample.TransformOrientedImage(labelImage, transform)
    segmentation = segmentationNode.GetSegmentation()
    before = set(segmentation.GetSegmentIDs())
    if _hasForeground(labelImage) and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelImage, segmentationNode, "", ""
    ):
        raise RuntimeError(f"Slicer could not import the label map into '{segmentationNode.GetName()}'.")
    byValue = {segmentation.GetSegment(i).GetLabelValue(): i for i in segmentation.GetSegmentIDs() if i not in before}
    ids = []
    for label in labels:
        segmentId = byValue.pop(label.value, None) or segmentation.AddEmptySegment("", label.name, list(label.color))
        _describeSegment(segmentation.GetSegment(segmentId), label, modelName)
        ids.append(segmentId)
    for value, segmentId in byValue.items():  # values the manifest does not name: keep them, say what they are
        _describeSegment(segmentation.GetSegment(segmentId), Label(value, f"Label {value}"), modelName)
        ids.append(segmentId)
    for index, segmentId in enumerate(ids, start=len(before)):  # the manifest's order, after existing segments
        segmentation.SetSegmentIndex(segmentId, index)
        segmentation.GetSegment(segmentId).SetTag(FINGERPRINT_TAG, _segmentFingerprint(segmentation, segmentId))
    return ids


def _hasForeground(image: Any) -> bool:
    scalars = image.GetPointData().GetScalars()
    return scalars is not None and scalars.GetRange()[1] > 0


def _describeSegment(segment: Any, label: Label, modelName: str) -> None:
    """Name, colour, terminology and provenance tags of one segment."""
    segment.SetName(label.name)
    segment.SetColor(*label.color)
    segment.SetTag(MODEL_TAG, modelName)
    segment.SetTag(LABEL_VALUE_TAG, str(label.value))
    if label.terminology:
        if hasattr(segment, "SetTerminology"):  # Slicer >= 5.10
            segment.SetTerminology(label.terminology)
        else:
            segment.SetTag(segment.GetTerminologyEntryTagName(), label.terminology)


def _replaceOldSegments(segmentationNode: Any, oldIds: list[str], newIds: list[str]) -> None:
    """Remove the old segments named like the new ones and put each new segment in the old one's place."""
    segmentation = segmentationNode.GetSegmentation()
    for newId in newIds:
        name = segmentation.GetSegment(newId).GetName()
        replaced = [i for i in oldIds if segmentation.GetSegment(i) and segmentation.GetSegment(i).GetName() == name]
        if not replaced:
            continue
        index = segmentation.GetSegmentIndex(replaced[0])
        for oldId in replaced:
            segmentation.RemoveSegment(oldId)
        segmentation.SetSegmentIndex(newId, index)


def _rollback(segmentationNode: Any, created: bool, before: list[str]) -> None:
    """Undo a failed import: remove the node we created, or the segments we added to the user's node."""
    if created:
        scene = slicer.mrmlScene
        for i in range(segmentationNode.GetNumberOfDisplayNodes()):
            displayNode = segmentationNode.GetNthDisplayNode(i)
            if displayNode is not None:
                scene.RemoveNode(displayNode)
        scene.RemoveNode(segmentationNode)
        return
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in set(segmentation.GetSegmentIDs()) - set(before):
        segmentation.RemoveSegment(segmentId)


def _segmentFingerprint(segmentation: Any, segmentId: str) -> str:
    """A hash of the segment's voxel positions, to tell later whether someone edited it."""
    segment = segmentation.GetSegment(segmentId)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if image is None or image.GetPointData().GetScalars() is None:
        return "empty"
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(dims) <= 0:
        return "empty"
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]) == segment.GetLabelValue()
    k, j, i = np.nonzero(voxels)
    if k.size == 0:
        return "empty"
    positions = np.stack([i + extent[0], j + extent[2], k + extent[4]]).astype(np.int64)
    return hashlib.sha1(positions.tobytes()).hexdigest()[:20]


def _segmentTag(segment: Any, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _placeBeside(node: Any, besideNode: Any) -> None:
    """Put `node` under the same subject-hierarchy parent (study) as `besideNode`."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    besideItem = shNode.GetItemByDataNode(besideNode) if shNode else 0
    if not besideItem:
        return
    parent = shNode.GetItemParent(besideItem)
    item = shNode.GetItemByDataNode(node) or shNode.CreateItem(parent, node)
    shNode.SetItemParent(item, parent)


def setWarnings(segmentationNode: Any, warnings: list[str]) -> None:
    """Keep the run's warnings on the node (one per line; removed when there are none) and log them."""
    if warnings:
        segmentationNode.SetAttribute(WARNINGS_TAG, "\n".join(warnings))
        for warning in warnings:
            logging.warning("%s: %s", segmentationNode.GetName(), warning)
    else:
        segmentationNode.RemoveAttribute(WARNINGS_TAG)


def warnings(segmentationNode: Any) -> list[str]:
    """The warnings of the run that last wrote this node (empty when it had none)."""
    text = segmentationNode.GetAttribute(WARNINGS_TAG)
    return text.split("\n") if text else []
