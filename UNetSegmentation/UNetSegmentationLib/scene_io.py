"""Scene I/O for the child process: volumes out to temporary NRRD files, label maps back in, and grid checks.

Slicer's own storage nodes write and read the files, so the geometry the core sees is exactly Slicer's; a
result that does not sample the input's voxel grid is refused rather than imported.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from unetseg.modality import ModalityGuess, guess_modality


def newWorkFolder() -> Path:
    """A fresh temporary folder (under Slicer's temporary path inside Slicer)."""
    base = getattr(getattr(slicer, "app", None), "temporaryPath", None)
    return Path(tempfile.mkdtemp(prefix="UNetSegmentation-", dir=base or None))


def asVolumeList(inputVolumes: Any) -> list[Any]:
    """One volume or a list of them, each checked to be an image volume with voxels."""
    volumes = list(inputVolumes) if isinstance(inputVolumes, (list, tuple)) else [inputVolumes]
    if not volumes or any(v is None for v in volumes):
        raise ValueError("Select an input volume.")
    for volume in volumes:
        if not volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLVectorVolumeNode"):
            raise ValueError(f"'{volume.GetName()}' is a {volume.GetClassName()}, not an image volume.")
        if volume.GetImageData() is None:
            raise ValueError(f"'{volume.GetName()}' has no image data.")
    return volumes


def checkInputs(volumes: list[Any], package: Any) -> None:
    """The model gets as many volumes as it has inputs, all on one voxel grid."""
    names = list(getattr(package, "input_names", None) or ["image"])
    if len(volumes) != len(names):
        raise ValueError(
            f"The model needs {len(names)} input volume(s) ({', '.join(names)}) in this order; "
            f"{len(volumes)} given."
        )
    first = volumes[0]
    for volume, name in zip(volumes[1:], names[1:], strict=True):
        if not _sameGrid(first, volume):
            raise ValueError(
                f"'{volume.GetName()}' ({name}) is not on the voxel grid of '{first.GetName()}' ({names[0]}). "
                "Resample it onto the first volume (module 'Resample Image (BRAINS)') and try again."
            )


def _sameGrid(a: Any, b: Any, tolerance: float = 1e-4) -> bool:
    if a.GetImageData().GetDimensions() != b.GetImageData().GetDimensions():
        return False
    return np.allclose(ijkToRas(a), ijkToRas(b), atol=tolerance)


def ijkToRas(volume: Any) -> np.ndarray:
    """The volume's IJK-to-RAS matrix as a 4×4 array."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def writeVolume(volume: Any, path: Path) -> Path:
    """Write a volume (its own grid, no parent transform) with Slicer's volume storage node."""
    node = _scalarCopyIfVector(volume)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.UseCompressionOff()
    if not storage.WriteData(node) or not path.is_file():
        raise RuntimeError(f"Could not write '{volume.GetName()}' to {path}. Is the temporary folder writable?")
    return path


def _scalarCopyIfVector(volume: Any) -> Any:
    """An RGB(A) volume (e.g. an X-ray loaded from PNG) as a luminance scalar volume outside the scene."""
    if not volume.IsA("vtkMRMLVectorVolumeNode"):
        return volume
    rgb = slicer.util.arrayFromVolume(volume).astype(np.float32)
    if rgb.shape[-1] not in (3, 4):
        raise ValueError(f"'{volume.GetName()}' has {rgb.shape[-1]} components per voxel; expected grey or RGB.")
    luminance = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114  # ITU-R BT.601 weights
    scalar = slicer.vtkMRMLScalarVolumeNode()
    scalar.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas(volume)))
    slicer.util.updateVolumeFromArray(scalar, luminance)
    scalar.SetName(volume.GetName())
    return scalar


def readLabelmap(path: Path, referenceVolume: Any) -> slicer.vtkOrientedImageData:
    """Read the predictor's label map with Slicer's storage node; check it samples the input's grid."""
    if not path.is_file():
        raise RuntimeError(f"The segmentation process wrote no result ({path} is missing).")
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise RuntimeError(f"Could not read the segmentation result {path}.")
    if not _samePhysicalGrid(node, referenceVolume):
        raise RuntimeError("The segmentation result is not on the input volume's voxel grid; it was not imported.")
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(node.GetImageData())
    image.SetGeometryFromImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToRas(node)))
    return image


def _samePhysicalGrid(a: Any, b: Any, tolerance: float = 1e-3) -> bool:
    """True when two volumes sample the same points, even if a reader flipped or permuted the index axes."""
    return np.allclose(_cornerPoints(a), _cornerPoints(b), atol=tolerance * max(1.0, max(b.GetSpacing())))


def _cornerPoints(volume: Any) -> np.ndarray:
    """The RAS positions of the 8 corner voxel centres, sorted (independent of axis order and direction)."""
    dims = volume.GetImageData().GetDimensions()
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    points = (ijkToRas(volume) @ corners.T).T[:, :3]
    return points[np.lexsort(np.round(points, 3).T[::-1])]


def writeLabelArray(labelArray: np.ndarray, volume: Any, path: Path) -> None:
    """Write a (k, j, i) label array on `volume`'s grid with Slicer's volume storage node."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas(volume)))
    slicer.util.updateVolumeFromArray(node, labelArray)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise RuntimeError(f"Could not write the label map {path}.")


def geometryVolume(segmentationNode: Any) -> Any:
    """The volume a segmentation's geometry comes from (None when it names none)."""
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


def volumeModality(volumeNode: Any) -> ModalityGuess:
    """The volume's modality: its DICOM series' Modality when loaded from DICOM, else a voxel-based guess."""
    array = slicer.util.arrayFromVolume(volumeNode) if volumeNode.GetImageData() else None
    return guess_modality(array, _dicomModality(volumeNode))


def _dicomModality(volumeNode: Any) -> str | None:
    """The DICOM Modality of the series a volume was loaded from (subject hierarchy, else the database)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    item = shNode.GetItemByDataNode(volumeNode) if shNode else 0
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    if item and shNode.GetItemAttribute(item, attribute):
        return shNode.GetItemAttribute(item, attribute)
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if uids and database is not None:
        return database.fileValue(database.fileForInstance(uids[0]), "0008,0060") or None
    return None
