"""UNetSegmentation: the Slicer module (Module, Widget and self-test).

The Widget is thin Qt glue over `UNetSegmentationLogic` (UNetSegmentationLib/slicer_logic.py), which is also
the Python-console API. Nothing here imports torch or MONAI: Slicer start-up stays fast.
"""

import enum
import logging
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from unetseg.evaluation.variant_figures import variant_summary
from unetseg.modality import MODALITY_TITLES
from unetseg.samples import load_samples, sample_path
from UNetSegmentationLib.dependencies import DependencyInstaller
from UNetSegmentationLib.logic import UNetSegmentationLogic

__all__ = ["UNetSegmentation", "UNetSegmentationLogic", "UNetSegmentationTest", "UNetSegmentationWidget"]

_HELP = """
Segment CT, MRI and X-ray images with the U-Net family (U-Net, V-Net, U-Net++, Attention U-Net and an
auto-configured nnU-Net-style network). Pick the input volume, modality and variant, press Apply, then refine
the result in Segment Editor. Runs on a CUDA or Apple GPU when there is one, on the CPU otherwise.
<p>From the Python console:</p>
<pre>
from UNetSegmentation import UNetSegmentationLogic
logic = UNetSegmentationLogic()
print(logic.availableModels(modality="CT"))
volume = slicer.util.getNode("CTChest")
segmentation = logic.segment(volume, model=logic.availableModels(modality="CT")[0], device="auto")
</pre>
<p>See the <a href="https://github.com/UNetSegmentation/SlicerUNetSegmentation">documentation</a>.</p>
"""


class UNetSegmentation(ScriptedLoadableModule):
    """Module metadata shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("U-Net Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["UNetSegmentation developers"]
        self.parent.helpText = _(_HELP)
        self.parent.acknowledgementText = _(
            "Built on MONAI, PyTorch, SimpleITK and slicerio; planning rules after nnU-Net (Isensee et al., "
            "Nature Methods 2021). Bundled models are trained by this extension's own trainer on openly "
            "licensed data; see each model's card."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the bundled samples (CT, MRI and a 2D radiograph, which Slicer lacks) in Sample Data."""
    import SampleData

    for sample in load_samples():
        files = [sample_path(name) for name in sample["images"]]
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="UNetSegmentation",
            sampleName=sample["name"],
            uris=[path.as_uri() for path in files],
            fileNames=[path.name for path in files],
            nodeNames=[f"{sample['name']}_{i}" if len(files) > 1 else sample["name"] for i in range(len(files))],
            thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "UNetSegmentation.png"),
            loadFileType="VolumeFile",
        )


VARIANT_TITLES = {
    "unet": "U-Net",
    "vnet": "V-Net",
    "unetpp": "U-Net++",
    "attention_unet": "Attention U-Net",
    "nnunet": "nnU-Net (auto-configured)",
}
DEVICE_TITLES = {"auto": "Auto", "cuda": "GPU (CUDA)", "mps": "Apple GPU (MPS)", "cpu": "CPU"}
EXTRA_INPUTS = (2, 3, 4)  # the panel offers up to four input sequences
SETTINGS_GROUP = "UNetSegmentation"
POLL_INTERVAL_MS = 200


class Modality(enum.Enum):
    """The panel's modality choice; Auto uses the volume's DICOM tag or voxels."""

    AUTO = "auto"
    CT = "CT"
    MR = "MR"
    XR = "XR"

    def label(self) -> str:
        return _("Auto") if self is Modality.AUTO else MODALITY_TITLES[self.value]


class Variant(enum.Enum):
    """Which network family the model list shows."""

    ANY = "any"
    UNET = "unet"
    VNET = "vnet"
    UNETPP = "unetpp"
    ATTENTION_UNET = "attention_unet"
    NNUNET = "nnunet"

    def label(self) -> str:
        return _("Any") if self is Variant.ANY else VARIANT_TITLES[self.value]


class TrainingVariant(enum.Enum):
    """The network family a training run builds."""

    NNUNET = "nnunet"
    UNET = "unet"
    VNET = "vnet"
    UNETPP = "unetpp"
    ATTENTION_UNET = "attention_unet"

    def label(self) -> str:
        return VARIANT_TITLES[self.value]


class Device(enum.Enum):
    """Where inference and training run."""

    AUTO = "auto"
    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"

    def label(self) -> str:
        return DEVICE_TITLES[self.value]


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
    tta: bool = False
    postprocess: bool = True
    showIn3D: bool = True
    outputSegmentation: vtkMRMLSegmentationNode
    trainingVariant: TrainingVariant = TrainingVariant.NNUNET
    timeBudgetMinutes: Annotated[int, WithinRange(1, 100000)] = 30
    fineTune: bool = False
    settingsRestored: bool = False


def _variantWords(variant: Variant) -> str:
    """How a variant filter reads inside a sentence ("" for any variant)."""
    return "" if variant is Variant.ANY else variant.label()


def _modelTooltip(info) -> str:
    """A model's description plus, where measured, its variant's figures (benchmarks/compare_variants.py)."""
    figures = variant_summary(info.variant)
    return info.describe() + (f"\n{figures}" if figures else "")


# The choices remembered across sessions in QSettings (the rest belongs to the scene; TTA follows the chosen model).
SETTINGS_KEYS = (
    "modality", "variant", "model", "device", "postprocess", "showIn3D", "trainingVariant",
    "timeBudgetMinutes",
)


class UNetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui widgets to the parameter node and the parameter node to the logic.

    Runs are `BackgroundRun`s of the logic, polled by a QTimer, so Slicer stays responsive; Apply and Start
    training turn into Cancel while their run is going.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runs = {}  # "segment" / "train" → BackgroundRun
        self._runStarts = {}
        self._modelKey = None
        self._modelInfos = {}
        self._modalityGuess = (None, None)  # (volume ID and image modified time, ModalityGuess)
        self._lastSegmentation = None
        self._curves = (None, None)  # training-curves table and chart
        self._curvesDirty = False
        self._deviceInfoShown = False

    # --- set-up and parameter node -----------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UNetSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNetSegmentationLogic()

        self.ui.progressBar.hide()
        self.ui.trainProgressBar.hide()
        self.ui.logTextEdit.setMaximumBlockCount(5000)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.evaluateSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.ui.evaluateReferenceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollRuns)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._updateDependencyStatus()

    def cleanup(self) -> None:
        """Module unload or application exit: stop the runs (they write nothing once cancelled)."""
        for run in list(self._runs.values()):
            run.cancel()
        self._timer.stop()
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
        if "segment" in self._runs:
            self._runs["segment"].cancel()
        self._curves = (None, None)
        self._lastSegmentation = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Wrap the logic's parameter node; a new one gets the last-used settings and the first volume."""
        parameterNode = UNetSegmentationParameterNode(self.logic.getParameterNode())
        if not parameterNode.settingsRestored:
            self._restoreSettings(parameterNode)
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
            self._modelKey = None
            self._updateGui()

    # --- keeping the panel in step with the parameter node ------------------------------------------------

    def _updateGui(self, caller=None, event=None) -> None:
        if not self._parameterNode:
            return
        self._refreshModels()
        self._updateInputSelectors()
        self._updateButtons()

    def _effectiveModality(self):
        """The modality code to filter models by (None: all), and the Auto guess to show (or None)."""
        choice = self._parameterNode.modality
        if choice is not Modality.AUTO:
            return choice.value, None
        volume = self._parameterNode.inputVolume
        if volume is None or volume.GetImageData() is None:
            return None, None
        key = (volume.GetID(), volume.GetImageData().GetMTime())
        if self._modalityGuess[0] != key:
            self._modalityGuess = (key, self.logic.guessModality(volume))
        guess = self._modalityGuess[1]
        return guess.modality, guess

    def _refreshModels(self) -> None:
        """Fill the model list for the modality and variant (only when those changed)."""
        modality, guess = self._effectiveModality()
        self.ui.modalityGuessLabel.text = f"{guess.title}: {guess.reason}" if guess else ""
        variant = self._parameterNode.variant
        key = (modality, variant)
        if key == self._modelKey:
            return
        self._modelKey = key
        self._modelInfos = {}
        try:
            names = self.logic.availableModels(modality, None if variant is Variant.ANY else variant.value)
            emptyText = _(
                "No {what} model in the catalog: choose another modality or variant, or import a model."
            ).format(what=" ".join(filter(None, [MODALITY_TITLES.get(modality), _variantWords(variant)])))
        except Exception as exc:  # e.g. Python packages not installed yet: say so in the panel
            logging.warning("Cannot list models: %s", exc)
            names = []
            emptyText = _("Cannot list models ({error}). Install the Python packages first.").format(error=exc)
        self._fillModelList(names, emptyText)

    def _fillModelList(self, names, emptyText: str) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for index, name in enumerate(names):
            combo.addItem(name)
            info = self._modelInfo(name)
            if info is not None:
                combo.setItemData(index, _modelTooltip(info), qt.Qt.ToolTipRole)
        chosen = self._parameterNode.model if self._parameterNode.model in names else (names[0] if names else "")
        combo.currentIndex = names.index(chosen) if chosen else -1
        combo.blockSignals(wasBlocked)
        if not names:
            self.ui.modelInfoLabel.text = emptyText
            self.ui.modelInfoLabel.toolTip = ""
        if self._parameterNode.model != chosen:
            self._parameterNode.model = chosen
        self._showModelInfo(chosen)

    def _modelInfo(self, name):
        """The catalog's package for a name (cached until the list is refreshed); None if it cannot be read."""
        if name and name not in self._modelInfos:
            try:
                self._modelInfos[name] = self.logic.modelInfo(name)
            except Exception as exc:
                logging.warning("Model %s cannot be read: %s", name, exc)
                self._modelInfos[name] = None
        return self._modelInfos.get(name)

    def _showModelInfo(self, name) -> None:
        info = self._modelInfo(name)
        if info is None:
            return
        labels = ", ".join(label.name for label in info.labels)
        text = _("{modality} · {variant} · {dims}D · inputs: {inputs} · labels: {labels}").format(
            modality=MODALITY_TITLES.get(info.modality, info.modality),
            variant=VARIANT_TITLES.get(info.variant, info.variant),
            dims=info.spatial_dims,
            inputs=", ".join(info.input_names),
            labels=labels,
        )
        self.ui.modelInfoLabel.text = text
        self.ui.modelInfoLabel.toolTip = _modelTooltip(info)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemText(index)
            info = self._modelInfo(self._parameterNode.model)
            if info is not None:  # the checkbox starts at the model's own default, so it shows what will run
                self._parameterNode.tta = bool(info.inference.get("tta", False))
            self._showModelInfo(self._parameterNode.model)

    def _inputNames(self):
        info = self._modelInfo(self._parameterNode.model)
        return list(info.input_names) if info is not None else ["image"]

    def _updateInputSelectors(self) -> None:
        """Show one selector per model input, labelled with the input's name."""
        names = self._inputNames()
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
        return volumes[: len(self._inputNames())]

    def _updateButtons(self, *unused) -> None:
        if not self._parameterNode:
            return
        segmenting, training = "segment" in self._runs, "train" in self._runs
        ready = bool(self._parameterNode.model) and all(self._inputVolumes())
        self.ui.applyButton.text = _("Cancel") if segmenting else _("Apply")
        self.ui.applyButton.enabled = segmenting or ready
        self.ui.applyButton.toolTip = (
            _("Stop the running segmentation") if segmenting
            else _("Segment the input in the background") if ready
            else _("Select the input volume(s) and a model")
        )
        self.ui.trainButton.text = _("Cancel training") if training else _("Start training")
        self.ui.refineButton.enabled = self._refineTarget() is not None
        self.ui.evaluateButton.enabled = bool(
            self.ui.evaluateSegmentationSelector.currentNode() and self.ui.evaluateReferenceSelector.currentNode()
        )

    # --- running -----------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        """Start the segmentation, or cancel the running one."""
        if "segment" in self._runs:
            self._runs["segment"].cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            output = p.outputSegmentation
            if output is not None and not self._confirmReplacing(output, p.model):
                return
            self._saveSettings()
            run = self.logic.segment(
                self._inputVolumes(), p.model, device=p.device.value, tta=p.tta,
                postprocess=None if p.postprocess else False, outputSegmentation=output, showIn3D=p.showIn3D,
                waitForCompletion=False, progressCallback=lambda event: self._onEvent("segment", event),
            )
            self._track("segment", run, _("Segmenting '{volume}' with {model}…").format(
                volume=p.inputVolume.GetName(), model=p.model))

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
        if "train" in self._runs:
            self._runs["train"].cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            folder = self.ui.trainingDatasetPathLineEdit.currentPath.strip()
            dataset = folder or list(self.ui.trainingSegmentationsSelector.checkedNodes())
            if not dataset:
                raise ValueError(_("Check at least one segmentation, or choose a dataset folder, to train on."))
            self._saveSettings()
            self._curves = (None, None)
            run = self.logic.train(
                dataset, variant=p.trainingVariant.value, timeBudgetMinutes=p.timeBudgetMinutes,
                initModel=p.model if p.fineTune and p.model else None, device=p.device.value,
                progressCallback=lambda event: self._onEvent("train", event),
            )
            self._track("train", run, _("Training {variant}…").format(variant=p.trainingVariant.label()))

    def _track(self, kind: str, run, message: str) -> None:
        self._runs[kind] = run
        self._runStarts[kind] = time.monotonic()
        bar = self._progressBar(kind)
        bar.setRange(0, 0)  # busy until the first fraction arrives
        bar.show()
        self._statusLabel(kind).text = message
        self._appendLog(message)
        self._timer.start()
        self._updateButtons()

    def _pollRuns(self) -> None:
        """QTimer tick: forward events, finish the runs that ended, refresh the training curves."""
        for kind, run in list(self._runs.items()):
            if not run.poll():
                del self._runs[kind]
                self._onFinished(kind, run)
        if self._curvesDirty and "train" in self._runs:
            self._updateCurves(self._runs["train"])
        if not self._runs:
            self._timer.stop()

    def _onEvent(self, kind: str, event: dict) -> None:
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
            self._appendLog(f"{prefix}[{stage}] {message}" if stage else prefix + message)

    def _onFinished(self, kind: str, run) -> None:
        self._progressBar(kind).hide()
        elapsed = time.monotonic() - self._runStarts.pop(kind, time.monotonic())
        if run.succeeded:
            message = self._onSegmented(run.result, elapsed) if kind == "segment" else self._onTrained(run, elapsed)
        elif run.cancelled:
            message = _("Cancelled; nothing was changed.")
        else:
            message = _("Failed: {error}").format(error=run.error)
            slicer.util.errorDisplay(message, windowTitle=_("U-Net Segmentation"))
        self._statusLabel(kind).text = message
        self._appendLog(message)
        self._updateButtons()

    def _onSegmented(self, segmentationNode, elapsed: float) -> str:
        self._lastSegmentation = segmentationNode
        self.ui.segmentationShow3DButton.setSegmentationNode(segmentationNode)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)
        count = segmentationNode.GetSegmentation().GetNumberOfSegments()
        return _("Done in {seconds:.0f} s: '{node}' has {count} segments.").format(
            seconds=elapsed, node=segmentationNode.GetName(), count=count)

    def _onTrained(self, run, elapsed: float) -> str:
        self._updateCurves(run)
        self._modelKey = None
        self._parameterNode.model = run.result
        self._updateGui()
        return _("Trained in {minutes:.1f} min: model '{name}' is in the model list.").format(
            minutes=elapsed / 60, name=run.result)

    def _updateCurves(self, run) -> None:
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

    def _progressBar(self, kind: str):
        return self.ui.progressBar if kind == "segment" else self.ui.trainProgressBar

    def _statusLabel(self, kind: str):
        return self.ui.statusLabel if kind == "segment" else self.ui.trainStatusLabel

    def _appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # --- other actions -----------------------------------------------------------------------------------

    def onImportModel(self) -> None:
        """Validate and copy a model zip (or a folder, via its model.json) into the user's model folder."""
        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import model"), "", _("Model package (*.zip model.json)")
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            name = self.logic.importModel(path)
            self._modelKey = None
            self._parameterNode.model = name
            self._updateGui()
            self._appendLog(_("Imported model '{name}' from {path}.").format(name=name, path=path))
            if name not in [self.ui.modelComboBox.itemText(i) for i in range(self.ui.modelComboBox.count)]:
                slicer.util.infoDisplay(_("Model '{name}' was imported; choose its modality and variant to see it.")
                                        .format(name=name))

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
        with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
            self._ensureDependencies()

    def _ensureDependencies(self) -> bool:
        """Install missing Python packages after one confirmation; False if the user declined."""
        installer = DependencyInstaller(self.resourcePath("requirements.txt"), log=self._appendLog)
        if not installer.missing():
            return True
        installed = installer.ensure()
        self._updateDependencyStatus()
        if installed:
            self._modelKey = None
            self._updateGui()
        return installed

    def _updateDependencyStatus(self) -> None:
        missing = DependencyInstaller(self.resourcePath("requirements.txt")).missing()
        self.ui.dependencyStatusLabel.text = (
            _("Missing: {names}. They are installed (after one confirmation) when you first press Apply.").format(
                names=", ".join(missing))
            if missing else _("All Python packages are installed.")
        )
        self.ui.installDependenciesButton.enabled = bool(missing)

    def _updateDeviceInfo(self) -> None:
        self._deviceInfoShown = True
        try:
            self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        except Exception as exc:  # a broken torch install must not break the panel
            self.ui.deviceInfoLabel.text = _("Device detection failed: {error}").format(error=exc)

    # --- settings that persist across sessions -----------------------------------------------------------

    def _saveSettings(self) -> None:
        settings = qt.QSettings()
        for key in SETTINGS_KEYS:
            value = getattr(self._parameterNode, key)
            settings.setValue(f"{SETTINGS_GROUP}/{key}", value.value if isinstance(value, enum.Enum) else value)

    @staticmethod
    def _restoreSettings(parameterNode) -> None:
        """Last-used choices from QSettings; values that no longer fit (an old enum name…) are skipped."""
        settings = qt.QSettings()
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


class UNetSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Developer mode → Reload and Test, or ctest): real model, real sample, CPU."""

    MIN_DICE = 0.5  # far below any bundled model's card, far above what a flipped or shifted result gets

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_offers_models_and_waits_for_input()
        self.setUp()
        self.test_bundled_sample_segmented_on_cpu()

    def test_panel_offers_models_and_waits_for_input(self):
        self.delayDisplay("Opening the panel")
        slicer.util.selectModule("UNetSegmentation")
        widget = slicer.modules.unetsegmentation.widgetRepresentation().self()
        self.assertFalse(widget.ui.applyButton.enabled, "Apply must wait for an input volume")
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.delayDisplay("Panel OK")

    def test_bundled_sample_segmented_on_cpu(self):
        logic = UNetSegmentationLogic()
        missing = DependencyInstaller().missing()
        self.assertEqual(missing, [], f"Install the Python packages first: {missing}")
        sample = self._sampleWithModel(logic)
        if sample is None:
            self.delayDisplay("No bundled sample names a bundled model: nothing to segment")
            return
        self.delayDisplay(f"Segmenting {sample['name']} with {sample['model']} on the CPU")
        volumes = [slicer.util.loadVolume(str(sample_path(name))) for name in sample["images"]]
        segmentation = logic.segment(volumes, sample["model"], device="cpu")
        package = logic.modelInfo(sample["model"])
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, [label.name for label in package.labels])
        reference = logic.importLabelmap(sample_path(sample["reference"]), volumes[0], package.labels)
        table = logic.evaluate(segmentation, reference, volumes[0])
        dice = slicer.util.arrayFromTableColumn(table, "dice")
        for row, value in enumerate(dice):
            self.assertGreaterEqual(value, self.MIN_DICE, f"Dice of {table.GetCellText(row, 0)} is {value:.3f}")
        self.delayDisplay(f"Dice per segment: {[round(float(d), 3) for d in dice]}")

    def _sampleWithModel(self, logic):
        """The first bundled sample whose model is in the catalog (None when there is none)."""
        available = set(logic.availableModels())
        return next((s for s in load_samples() if s.get("model") in available), None)
