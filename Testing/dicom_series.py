"""A small CT DICOM series written from an `Image` (by SimpleITK) with the tags readers and highdicom need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unetseg.image import Image

UID_ROOT = "1.2.826.0.1.3680043.2.1125"  # a demonstration root; each series gets its own branch


def write_dicom_series(image: Image, folder: Path, number: int = 1) -> Path:
    """Write ``image`` (int16) as a CT series, one file per slice, into a new ``folder``; ``number`` makes its
    study, series and instance UIDs unique among the series of one test."""
    folder.mkdir(parents=True)
    volume = image.with_array(image.array.astype(np.int16)).to_sitk()
    d = image.direction
    orientation = "\\".join(f"{v:.9f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0010|0020": f"PHANTOM{number}",
            "0020|000d": f"{UID_ROOT}.1.{number}", "0020|000e": f"{UID_ROOT}.2.{number}",
            "0020|0052": f"{UID_ROOT}.4.{number}", "0020|0011": str(number),
            "0020|0037": orientation, "0020|0013": str(k + 1), "0018|0050": str(image.spacing[2]),
            "0020|0032": "\\".join(f"{v:.9f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0008|0018": f"{UID_ROOT}.3.{number}.{k + 1}",
        }  # fmt: skip
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return folder
