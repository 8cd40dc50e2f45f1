"""The panel's state: its choices (enums built from the vocabulary), the parameter node, the remembered settings.

The combo boxes list the vocabulary's codes in its order with its titles, so a new variant or device reaches
the panel without an edit here. The choices named in SETTINGS_KEYS are remembered across sessions in the
QSettings the widget passes in; the rest belongs to the scene, and TTA follows the chosen model.
"""

import enum
import logging
from collections.abc import Iterable
from typing import Annotated, Any

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

from unetseg.vocabulary import (
    DEFAULT_TRAINING_VARIANT,
    DEVICE_TITLES,
    DEVICES,
    MODALITIES,
    MODALITY_TITLES,
    PRECISION_TITLES,
    PRECISIONS,
    VARIANT_TITLES,
    VARIANTS,
)

AUTO = "auto"  # the modality choice that uses the volume's DICOM tag or voxels
ANY = "any"  # the variant filter that lists every network family
EXTRA_INPUTS = (2, 3, 4)  # the panel offers up to four input sequences
SETTINGS_GROUP = "UNetSegmentation"
# The choices remembered across sessions in QSettings (the rest belongs to the scene; TTA follows the chosen model).
SETTINGS_KEYS = (
    "modality", "variant", "model", "device", "precision", "postprocess", "showIn3D", "trainingVariant",
    "timeBudgetMinutes",
)


class PanelChoice(enum.Enum):
    """A choice in one of the panel's combo boxes: its value is the vocabulary's code, `label()` the text shown."""

    def label(self) -> str:
        """The vocabulary's title for the code, or Auto / Any for the catch-all choices."""
        titles = _TITLES[type(self)]
        if self.value in titles:
            return titles[self.value]
        return _("Any") if self.value == ANY else _("Auto")


def _members(codes: Iterable[str]) -> list[tuple[str, str]]:
    """Enum members named after their codes: ("AUTO", "auto"), ("ATTENTION_UNET", "attention_unet") …"""
    return [(code.upper(), code) for code in codes]


# The panel's modality choice; Auto uses the volume's DICOM tag or voxels.
Modality = PanelChoice("Modality", _members([AUTO, *MODALITIES]), module=__name__)
# Which network family the model list shows.
Variant = PanelChoice("Variant", _members([ANY, *VARIANTS]), module=__name__)
# The network family a training run builds, the default first.
TrainingVariant = PanelChoice(
    "TrainingVariant",
    _members([DEFAULT_TRAINING_VARIANT, *(v for v in VARIANTS if v != DEFAULT_TRAINING_VARIANT)]),
    module=__name__,
)
# Where inference and training run.
Device = PanelChoice("Device", _members(DEVICES), module=__name__)
# The numeric precision of the windows; Auto takes the fastest one validated for the model.
Precision = PanelChoice("Precision", _members(PRECISIONS), module=__name__)
_TITLES = {Modality: MODALITY_TITLES, Variant: VARIANT_TITLES, TrainingVariant: VARIANT_TITLES, Device: DEVICE_TITLES,
           Precision: PRECISION_TITLES}


@parameterNodeWrapper
class UNetSegmentationParameterNode:
    """The panel's state, saved with the scene; widgets bind through their SlicerParameterName property."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    inputVolume4: vtkMRMLScalarVolumeNode
    modality: Modality = Modality.AUTO
    variant: Variant = Variant.ANY
    model: str = ""
    device: Device = Device.AUTO
    precision: Precision = Precision.AUTO
    tta: bool = False
    postprocess: bool = True
    showIn3D: bool = True
    outputSegmentation: vtkMRMLSegmentationNode
    trainingVariant: TrainingVariant = TrainingVariant.NNUNET
    timeBudgetMinutes: Annotated[int, WithinRange(1, 100000)] = 30
    fineTune: bool = False
    settingsRestored: bool = False


def saveSettings(parameterNode: Any, settings: Any) -> None:
    """Remember the SETTINGS_KEYS choices in `settings` (a QSettings), enums by their code."""
    for key in SETTINGS_KEYS:
        value = getattr(parameterNode, key)
        settings.setValue(f"{SETTINGS_GROUP}/{key}", value.value if isinstance(value, enum.Enum) else value)


def restoreSettings(parameterNode: Any, settings: Any) -> None:
    """Last-used choices from `settings` (a QSettings); values that no longer fit (an old enum code…) are skipped."""
    for key in SETTINGS_KEYS:
        stored = settings.value(f"{SETTINGS_GROUP}/{key}")
        if stored is None:
            continue
        current = getattr(parameterNode, key)
        try:
            if isinstance(current, enum.Enum):
                value = type(current)(stored)
            elif isinstance(current, bool):
                value = slicer.util.toBool(stored)
            else:
                value = type(current)(stored)
            setattr(parameterNode, key, value)
        except (ValueError, TypeError) as exc:
            logging.info("Ignoring stored setting %s=%r: %s", key, stored, exc)
