"""The module's panel: binds the .ui widgets to the parameter node and the parameter node to the logic.

The only file of the extension that imports Qt. The model list (model_list.py) and the running jobs
(run_monitor.py) are plain Python over the panel's widgets; the choices and remembered settings live in
panel_state.py, and everything the panel does to the scene goes through `UNetSegmentationLogic`.
"""

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from unetseg.models.card import title
from unetseg.vocabulary import MODALITY_TITLES
from UNetSegmentationLib.apply_state import applyState
from UNetSegmentationLib.dependencies import DependencyInstaller
from UNetSegmentationLib.logic import UNetSegmentationLogic
from UNetSegmentationLib.model_list import ModelList
from UNetSegmentationLib.panel_state import (
    EXTRA_INPUTS,
    UNetSegmentationParameterNode,
    restoreSettings,
    saveSettings,
)
from UNetSegmentationLib.run_monitor import SEGMENT, TRAIN, RunMonitor

POLL_INTERVAL_MS = 200


class UNetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui widgets to the parameter node and the parameter node to the logic.

    Runs are `BackgroundRun`s of the logic, shown and polled by a `RunMonitor` on a QTimer, so Slicer stays
    responsive; Apply and Start training turn into Cancel while their run is going.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.runs = None  # RunMonitor, made in setup
        self.models = None  # ModelList, made in setup
        self._lastSegmentation = None
        self._deviceInfoShown = False

    # --- set-up and parameter node -----------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UNetSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNetSegmentationLogic()
        self.models = ModelList(self.ui, self.logic, qt.Qt.ToolTipRole)

        self.ui.progressBar.hide()
        self.ui.trainProgressBar.hide()
        self.ui.logTextEdit.setMaximumBlockCount(5000)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.showIn3DCheckBox.connect("toggled(bool)", self.onShowIn3DToggled)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.evaluateSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.ui.evaluateReferenceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)

        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)
        self.runs = RunMonitor(self.ui, self.logic, timer, self._onSucceeded, self._updateButtons)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module unload or application exit: stop the runs (they write nothing once cancelled)."""
        self.runs.cancelAll()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if not self._deviceInfoShown:  # imports torch: after the panel is drawn, once
            qt.QTimer.singleShot(300, self._updateDeviceInfo)

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        """A segmentation would import into a closing scene: cancel it. Training goes on."""
        self.runs.cancel(SEGMENT)
        self.runs.forgetCurves()
        self._lastSegmentation = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Wrap the logic's parameter node; a new one gets the last-used settings and the first volume."""
        parameterNode = UNetSegmentationParameterNode(self.logic.getParameterNode())
        if not parameterNode.settingsRestored:
            restoreSettings(parameterNode, qt.QSettings())
            parameterNode.settingsRestored = True
        if not parameterNode.inputVolume:
            images = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                      if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            parameterNode.inputVolume = images[0] if images else None
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self.models.invalidate()
            self._updateGui()

    # --- keeping the panel in step with the parameter node ------------------------------------------------

    def _updateGui(self, caller=None, event=None) -> None:
        if not self._parameterNode:
            return
        self.models.refresh(self._parameterNode)
        self._updateInputSelectors()
        self._updateButtons()

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)
            info = self.models.info(self._parameterNode.model)
            if info is not None:  # the checkbox starts at the model's own default, so it shows what will run
                self._parameterNode.tta = bool(info.inference.get("tta", False))
            self.models.showInfo(self._parameterNode.model)

    def _updateInputSelectors(self) -> None:
        """Show one selector per model input, labelled with the input's name."""
        names = self.models.inputNames(self._parameterNode.model)
        self.ui.inputVolumeLabel.text = _("Input volume:") if len(names) == 1 else f"{names[0]}:"
        for number in EXTRA_INPUTS:
            visible = number <= len(names)
            getattr(self.ui, f"inputVolume{number}Label").visible = visible
            getattr(self.ui, f"inputVolume{number}Selector").visible = visible
            if visible:
                getattr(self.ui, f"inputVolume{number}Label").text = f"{names[number - 1]}:"

    def _inputVolumes(self):
        p = self._parameterNode
        volumes = [p.inputVolume, p.inputVolume2, p.inputVolume3, p.inputVolume4]
        return volumes[: len(self.models.inputNames(p.model))]

    def _updateButtons(self, *unused) -> None:
        if not self._parameterNode:
            return
        segmenting, training = self.runs.running(SEGMENT), self.runs.running(TRAIN)
        model = self._parameterNode.model
        backend, missing = self.models.runPlan(model) if model else ("", [])
        state = applyState(segmenting, bool(model), all(self._inputVolumes()), backend, missing)
        self.ui.applyButton.text = state.text
        self.ui.applyButton.enabled = state.enabled
        self.ui.applyButton.toolTip = state.toolTip
        self.ui.dependencyStatusLabel.text = state.status
        self.ui.installDependenciesButton.visible = state.installVisible
        self.ui.trainButton.text = _("Cancel training") if training else _("Start training")
        self.ui.refineButton.enabled = self._refineTarget() is not None
        self.ui.evaluateButton.enabled = bool(
            self.ui.evaluateSegmentationSelector.currentNode() and self.ui.evaluateReferenceSelector.currentNode()
        )

    # --- running -----------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        """Start the segmentation, or cancel the running one."""
        if self.runs.running(SEGMENT):
            self.runs.cancel(SEGMENT)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            p = self._parameterNode
            if not self._confirmModality(p.inputVolume, p.model):
                return
            backend, _missing = self.models.runPlan(p.model)
            if not self._ensureDependencies(backend):
                return
            output = p.outputSegmentation
            if output is not None and not self._confirmReplacing(output, p.model):
                return
            saveSettings(self._parameterNode, qt.QSettings())
            run = self.logic.segment(
                self._inputVolumes(), p.model, device=p.device.value, tta=p.tta,
                postprocess=None if p.postprocess else False, outputSegmentation=output, showIn3D=p.showIn3D,
                waitForCompletion=False, progressCallback=lambda event: self.runs.onEvent(SEGMENT, event),
                backend=backend, precision=p.precision.value,
            )
            info = self.models.info(p.model)
            self.runs.track(SEGMENT, run, _("Segmenting '{volume}' with {model}…").format(
                volume=p.inputVolume.GetName(), model=title(info) if info is not None else p.model))

    def _confirmModality(self, volume, model) -> bool:
        """Ask before running a model made for another modality than the input's (True: go ahead)."""
        mismatch = self.logic.modalityMismatch(volume, model)
        if not mismatch:
            return True
        return slicer.util.confirmOkCancelDisplay(
            mismatch + "\n\n" + _("Run it anyway?"), windowTitle=_("Model for another modality")
        )

    def _confirmReplacing(self, segmentationNode, model) -> bool:
        """Ask before replacing segments that were edited by hand (True: go ahead)."""
        edited = self.logic.editedSegments(segmentationNode, model)
        if not edited:
            return True
        return slicer.util.confirmOkCancelDisplay(
            _("These segments of '{node}' were edited or drawn by hand and will be replaced by the model's "
              "result:\n\n{names}\n\nContinue?").format(node=segmentationNode.GetName(), names=", ".join(edited)),
            windowTitle=_("Replace edited segments?"),
        )

    def onTrainButton(self) -> None:
        """Start training from the checked scene cases or the dataset folder, or cancel the running one."""
        if self.runs.running(TRAIN):
            self.runs.cancel(TRAIN)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            folder = self.ui.trainingDatasetPathLineEdit.currentPath.strip()
            dataset = folder or list(self.ui.trainingSegmentationsSelector.checkedNodes())
            if not dataset:
                raise ValueError(_("Check at least one segmentation, or choose a dataset folder, to train on."))
            saveSettings(self._parameterNode, qt.QSettings())
            self.runs.forgetCurves()
            run = self.logic.train(
                dataset, variant=p.trainingVariant.value, timeBudgetMinutes=p.timeBudgetMinutes,
                initModel=p.model if p.fineTune and p.model else None, device=p.device.value,
                progressCallback=lambda event: self.runs.onEvent(TRAIN, event),
            )
            self.runs.track(TRAIN, run, _("Training {variant}…").format(variant=p.trainingVariant.label()))

    def _onSucceeded(self, kind: str, run, elapsed: float) -> str:
        """The message for a run that succeeded, after showing its result."""
        return self._onSegmented(run.result, elapsed) if kind == SEGMENT else self._onTrained(run, elapsed)

    def _onSegmented(self, segmentationNode, elapsed: float) -> str:
        self._lastSegmentation = segmentationNode
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)
        count = segmentationNode.GetSegmentation().GetNumberOfSegments()
        done = _("Done in {seconds:.0f} s: '{node}' has {count} segments.").format(
            seconds=elapsed, node=segmentationNode.GetName(), count=count)
        warnings = self.logic.segmentationWarnings(segmentationNode)
        if not warnings:
            return done
        # Warnings about the input are part of the result: shown, not only logged.
        slicer.util.warningDisplay("\n\n".join(warnings), windowTitle=_("U-Net Segmentation: check the result"))
        return done + " " + _("{count} warning(s): see the log.").format(count=len(warnings))

    def _onTrained(self, run, elapsed: float) -> str:
        self.runs.updateCurves(run)
        self.models.invalidate()
        self._parameterNode.model = run.result
        self._updateGui()
        return _("Trained in {minutes:.1f} min: model '{name}' is in the model list.").format(
            minutes=elapsed / 60, name=run.result)

    # --- other actions -----------------------------------------------------------------------------------

    def onImportModel(self) -> None:
        """Import a model package, an nnU-Net v2 trained-model folder or a MONAI bundle (a folder or a zip)."""
        path = self._askModelLocation()
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            try:
                name = self.logic.importModel(path)
            except RuntimeError as error:
                if "--modality" not in str(error) or not (modality := self._askModality()):
                    raise
                name = self.logic.importModel(path, modality=modality)
            self.models.invalidate()
            self._parameterNode.model = name
            self._updateGui()
            self.runs.appendLog(_("Imported model '{name}' from {path}.").format(name=name, path=path))
            if name not in [self.ui.modelComboBox.itemData(i) for i in range(self.ui.modelComboBox.count)]:
                slicer.util.infoDisplay(_("Model '{name}' was imported; choose its modality and variant to see it.")
                                        .format(name=name))

    def _askModality(self) -> str:
        """The modality of a MONAI bundle whose metadata names none, asked of the user ("" when cancelled)."""
        titles = list(MODALITY_TITLES.values())
        chosen = qt.QInputDialog.getItem(self.parent, _("Import model"), _(
            "The bundle does not say which images its network reads. Which modality is it for?"), titles, 0, False)
        return next((code for code, text in MODALITY_TITLES.items() if text == chosen), "")

    def _askModelLocation(self) -> str:
        """A folder or a zip chosen by the user (one Qt dialog cannot offer both), or "" when cancelled."""
        box = qt.QMessageBox(self.parent)
        box.setWindowTitle(_("Import model"))
        box.setText(_("Import a model package, an nnU-Net v2 trained-model folder (or the Dataset folder above it) "
                      "or a MONAI bundle. Is it a folder or a zip file?"))
        folderButton = box.addButton(_("Folder…"), qt.QMessageBox.AcceptRole)
        zipButton = box.addButton(_("Zip file…"), qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        if box.clickedButton() == folderButton:
            return qt.QFileDialog.getExistingDirectory(self.parent, _("Model folder"))
        if box.clickedButton() == zipButton:
            return qt.QFileDialog.getOpenFileName(self.parent, _("Model zip"), "", _("Model (*.zip)"))
        return ""

    def _refineTarget(self):
        """The segmentation to refine: the last result, else the selected output, if still in the scene."""
        for node in (self._lastSegmentation, self._parameterNode.outputSegmentation if self._parameterNode else None):
            if node is not None and node.GetScene() is slicer.mrmlScene:
                return node
        return None

    def onRefine(self) -> None:
        """Open Segment Editor on the result, with the input volume as source volume."""
        segmentationNode = self._refineTarget()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentationNode)
        volume = self._parameterNode.inputVolume
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(volume)
        else:  # Slicer < 5.2
            editor.setMasterVolumeNode(volume)

    def onEvaluate(self) -> None:
        """Dice, IoU and HD95 per segment of the chosen segmentation against the reference, as a table."""
        with slicer.util.tryWithErrorDisplay(_("Evaluation failed."), waitCursor=True):
            if not self._ensureDependencies():
                return
            table = self.logic.evaluate(
                self.ui.evaluateSegmentationSelector.currentNode(), self.ui.evaluateReferenceSelector.currentNode()
            )
            self.ui.evaluationTableView.setMRMLTableNode(table)

    def onInstallDependencies(self) -> None:
        """Install what the chosen model needs to run (next to Apply)."""
        with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
            model = self._parameterNode.model if self._parameterNode else ""
            self._ensureDependencies(self.models.runPlan(model)[0] if model else None)

    def onShowIn3DToggled(self, show: bool) -> None:
        """Show or hide the last result in 3D (the choice also applies to the next run)."""
        node = self._lastSegmentation
        if node is not None and node.GetScene() is slicer.mrmlScene:
            self.logic.showIn3D(node, show)

    def _ensureDependencies(self, backend: str | None = None) -> bool:
        """Install the packages a `backend` run (else everything) needs after one confirmation; False if declined."""
        installer = DependencyInstaller(self.resourcePath("requirements.txt"), log=self.runs.appendLog)
        if not (installer.missingFor(backend) if backend else installer.missing()):
            return True
        installed = installer.ensure(backend)
        if installed:
            self.models.invalidate()
            self._updateGui()
        return installed

    def _updateDeviceInfo(self) -> None:
        self._deviceInfoShown = True
        try:
            self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        except Exception as exc:  # a broken torch install must not break the panel
            self.ui.deviceInfoLabel.text = _("Device detection failed: {error}").format(error=exc)
