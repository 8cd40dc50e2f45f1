"""The panel's model list: the catalog's models for the chosen (or guessed) modality and variant, described.

Each entry shows the model's heading (human name, modality, body region, variant) and keeps its catalog name as
item data; the line under the list and the tooltips are the model's card (`unetseg.models.card`): its measured
held-out figure and, for a demonstration model, what little it was trained on. Plain Python over the panel's
combo box and labels: it imports no Qt (the widget passes the tooltip role in).
"""

from __future__ import annotations

import logging
from typing import Any

from slicer.i18n import tr as _

from unetseg.models import card
from unetseg.vocabulary import MODALITY_TITLES
from UNetSegmentationLib.dependencies import TORCH
from UNetSegmentationLib.panel_state import Modality, Variant


class ModelList:
    """Fills `ui.modelComboBox` and `ui.modelInfoLabel`; caches the packages it read until the next refill."""

    def __init__(self, ui: Any, logic: Any, toolTipRole: int) -> None:
        self.ui = ui
        self.logic = logic
        self._toolTipRole = toolTipRole
        self._key: tuple | None = None  # (modality, variant) the list was filled for
        self._infos: dict[str, Any] = {}
        self._runPlans: dict[str, tuple[str, list[str]]] = {}
        self._modalityGuess: tuple = (None, None)  # (volume ID and image modified time, ModalityGuess)

    def invalidate(self) -> None:
        """The catalog changed (a model was trained or imported, packages installed): refill on the next refresh."""
        self._key = None

    def refresh(self, parameterNode: Any) -> None:
        """Fill the model list for the modality and variant (only when those changed)."""
        modality, guess = self._effectiveModality(parameterNode)
        self.ui.modalityGuessLabel.text = f"{guess.title}: {guess.reason}" if guess else ""
        variant = parameterNode.variant
        key = (modality, variant)
        if key == self._key:
            return
        self._key = key
        self._infos, self._runPlans = {}, {}
        try:
            names = self.logic.availableModels(modality, None if variant is Variant.ANY else variant.value)
            emptyText = _(
                "No {what} model in the catalog: choose another modality or variant, or import a model."
            ).format(what=" ".join(filter(None, [MODALITY_TITLES.get(modality), _variantWords(variant)])))
        except Exception as exc:  # e.g. an unreadable model folder: say so in the panel
            logging.warning("Cannot list models: %s", exc)
            names = []
            emptyText = _("Cannot list models: {error}").format(error=exc)
        self._fill(parameterNode, names, emptyText)

    def info(self, name: str) -> Any:
        """The catalog's package for a name (cached until the list is refilled); None if it cannot be read."""
        if name and name not in self._infos:
            try:
                self._infos[name] = self.logic.modelInfo(name)
            except Exception as exc:
                logging.warning("Model %s cannot be read: %s", name, exc)
                self._infos[name] = None
        return self._infos.get(name)

    def runPlan(self, name: str) -> tuple[str, list[str]]:
        """How the model would run here and what it still needs (the logic's `segmentationBackend`), cached."""
        if name not in self._runPlans:
            info = self.info(name)
            self._runPlans[name] = self.logic.segmentationBackend(info) if info is not None else (TORCH, [])
        return self._runPlans[name]

    def inputNames(self, name: str) -> list[str]:
        """The model's input names, in order (one "image" when the model cannot be read)."""
        info = self.info(name)
        return list(info.input_names) if info is not None else ["image"]

    def showInfo(self, name: str) -> None:
        """Describe the model under the list: labels, its measured held-out figure, the demonstration note."""
        info = self.info(name)
        if info is None:
            return
        self.ui.modelInfoLabel.text = card.info_line(info)
        self.ui.modelInfoLabel.toolTip = card.tooltip(info)

    def _effectiveModality(self, parameterNode: Any) -> tuple:
        """The modality code to filter models by (None: all), and the Auto guess to show (or None)."""
        choice = parameterNode.modality
        if choice is not Modality.AUTO:
            return choice.value, None
        volume = parameterNode.inputVolume
        if volume is None or volume.GetImageData() is None:
            return None, None
        key = (volume.GetID(), volume.GetImageData().GetMTime())
        if self._modalityGuess[0] != key:
            self._modalityGuess = (key, self.logic.guessModality(volume))
        guess = self._modalityGuess[1]
        return guess.modality, guess

    def _fill(self, parameterNode: Any, names: list[str], emptyText: str) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for index, name in enumerate(names):
            info = self.info(name)
            combo.addItem(card.heading(info) if info is not None else name, name)  # item data: the catalog name
            if info is not None:
                combo.setItemData(index, card.tooltip(info), self._toolTipRole)
        chosen = parameterNode.model if parameterNode.model in names else (names[0] if names else "")
        combo.currentIndex = names.index(chosen) if chosen else -1
        combo.blockSignals(wasBlocked)
        if not names:
            self.ui.modelInfoLabel.text = emptyText
            self.ui.modelInfoLabel.toolTip = ""
        if parameterNode.model != chosen:
            parameterNode.model = chosen
        self.showInfo(chosen)


def _variantWords(variant: Any) -> str:
    """How a variant filter reads inside a sentence ("" for any variant)."""
    return "" if variant is Variant.ANY else variant.label()
