"""Images in (files and DICOM series), label maps out (Slicer segmentations or plain maps), atomic writes.

The package's public names are importable from here: ``from unetseg.io import read_images, write_label_image``.
"""

from unetseg.io.atomic import atomic_write
from unetseg.io.read import LABEL_MAP_SUFFIXES, SEGMENTATION_SUFFIX, read_image, read_images, read_label_image
from unetseg.io.write import write_label_image

__all__ = [
    "LABEL_MAP_SUFFIXES",
    "SEGMENTATION_SUFFIX",
    "atomic_write",
    "read_image",
    "read_images",
    "read_label_image",
    "write_label_image",
]
