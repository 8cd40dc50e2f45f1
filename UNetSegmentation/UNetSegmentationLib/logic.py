"""`UNetSegmentationLogic`: the bridge between Slicer's MRML scene and the headless core (also the console API).

Volumes leave the scene as temporary NRRD files (scene_io.py), the core runs in a background process
(`python -m unetseg predict|train … --progress json`, a `BackgroundRun` the caller polls), and the resulting
label map comes back and is imported once into a segmentation node (segment_import.py). The scene is only
touched when a run has succeeded, and an import that fails half-way is rolled back, so failure and cancel leave
it as it was. Training data, evaluation tables and training curves come from training_scene.py.

Imports `slicer` and `vtk`, never `qt`: headless tests run it on slicer-core's real MRML classes.

Example (Slicer's Python console)::

    from UNetSegmentation import UNetSegmentationLogic
    logic = UNetSegmentationLogic()
    print(logic.availableModels(modality="CT"))
    segmentation = logic.segment(slicer.util.getNode("CTChest"), model="...", device="auto")
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer

from unetseg.image import Label
from unetseg.jobs.process import BackgroundProcess, BackgroundRun
from unetseg.modality import ModalityGuess
from unetseg.models.card import title
from unetseg.models.catalog import Catalog
from unetseg.models.importers import PACKAGE, detect_format
from unetseg.vocabulary import (
    DEFAULT_TRAINING_VARIANT,
    DEVICES,
    MODALITIES,
    MODALITY_TITLES,
    PRECISIONS,
    VARIANTS,
    check_choice,
)
from UNetSegmentationLib import scene_io, segment_import, training_scene
from UNetSegmentationLib.dependencies import ONNX, TORCH, DependencyInstaller

MODULE_NAME = "UNetSegmentation"

ProgressCallback = Callable[[dict], None]


class UNetSegmentationLogic:
    """Segment, evaluate and train from Slicer's scene; usable from the Python console without the panel.

    The model catalog is opened lazily, so constructing the logic reads nothing. `catalog` and
    `processFactory` (called like `BackgroundProcess(args, python=…)`) can be replaced, e.g. in tests.
    """

    def __init__(
        self,
        catalog: Any = None,
        processFactory: Callable[..., BackgroundProcess] = BackgroundProcess,
        dependencies: Any = None,
    ) -> None:
        self._catalog = catalog
        self._processFactory = processFactory
        self._dependencies = dependencies

    # --- catalog -------------------------------------------------------------------------------------

    @property
    def catalog(self) -> Any:
        """The model catalog (bundled and user models)."""
        if self._catalog is None:
            self._catalog = Catalog()
        return self._catalog

    def availableModels(self, modality: str | None = None, variant: str | None = None) -> list[str]:
        """Names of the catalog's models, optionally only those for a modality (CT/MR/XR) and variant."""
        return list(self.catalog.names(modality=modality, variant=variant))

    def modelInfo(self, model: str) -> Any:
        """The validated model package for a catalog name or a model folder (raises if it is invalid)."""
        return self.catalog.get(str(model))

    def importModel(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        waitForCompletion: bool = True,
        progressCallback: ProgressCallback | None = None,
        python: str | None = None,
        modality: str | None = None,
    ) -> Any:
        """Import a model into the user's model folder: a package (zip or folder), an nnU-Net v2 trained-model
        folder or zip, or a MONAI bundle folder or zip; return its catalog name.

        A package is validated and copied here. A foreign model is converted by `unetseg models import` in a
        background process (it reads checkpoints with PyTorch, which the GUI process need not load); `name`
        names the converted model, `modality` ("CT", "MR", "XR") is a MONAI bundle's whose metadata names none.
        Without `waitForCompletion`, a `BackgroundRun` whose `result` is the name.
        """
        if detect_format(path) == PACKAGE:
            if name or modality:
                raise ValueError("A model package keeps its name and modality in its model.json; change them there.")
            return self.catalog.import_model(Path(path))
        args = ["models", "import", str(Path(path).expanduser().absolute()), "--progress", "json"]
        args += ["--name", name] if name else []
        args += ["--modality", check_choice("modality", modality, MODALITIES)] if modality else []
        workDir = scene_io.newWorkFolder()
        return self._run(args, _importedName, workDir, progressCallback, python, waitForCompletion)

    @property
    def dependencies(self) -> DependencyInstaller:
        """What is installed in this Python and how the missing packages get installed."""
        if self._dependencies is None:
            self._dependencies = DependencyInstaller()
        return self._dependencies

    def segmentationBackend(self, model: Any) -> tuple[str, list[str]]:
        """How `model` (a name or package) would run here, "torch" or "onnx", and the packages it still needs.

        A model with an ONNX export runs through ONNX Runtime when PyTorch is not installed, so a stock Slicer
        needs only that one package (and no package at all to list and describe models).
        """
        package = self.modelInfo(model) if isinstance(model, str) else model
        onnxPath = getattr(package, "onnx_path", None)
        backend = self.dependencies.segmentationBackend(bool(onnxPath) and Path(onnxPath).is_file())
        return backend, self.dependencies.missingFor(backend)

    # --- inputs --------------------------------------------------------------------------------------

    def guessModality(self, volumeNode: Any) -> ModalityGuess:
        """The volume's modality: its DICOM series' Modality when loaded from DICOM, else a voxel-based guess."""
        return scene_io.volumeModality(volumeNode)

    def modalityMismatch(self, volumeNode: Any, model: Any) -> str:
        """A sentence saying that `model` (a name or package) is for another modality than the volume, else "".

        The volume's modality comes from its DICOM tag or its voxels (`guessModality`); an unknown one is no
        mismatch. The panel asks before running such a model: its result would mean nothing.
        """
        package = self.modelInfo(model) if isinstance(model, str) else model
        guess = self.guessModality(volumeNode)
        if guess.modality is None or guess.modality == package.modality:
            return ""
        return (
            f"'{volumeNode.GetName()}' looks like {guess.title} ({guess.reason}), but the model "
            f"'{title(package)}' was trained on {MODALITY_TITLES.get(package.modality, package.modality)}: "
            "its result on this input would mean nothing."
        )

    def getParameterNode(self) -> Any:
        """The module's singleton parameter node in the scene (created on first use), as Slicer's logic does."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = scene.AddNode(node)
        return node

    # --- segmentation --------------------------------------------------------------------------------

    def segment(
        self,
        inputVolumes: Any,
        model: str,
        device: str = "auto",
        tta: bool | None = None,
        postprocess: bool | None = None,
        outputSegmentation: Any = None,
        showIn3D: bool = False,
        waitForCompletion: bool = True,
        progressCallback: ProgressCallback | None = None,
        python: str | None = None,
        backend: str | None = None,
        precision: str = "auto",
    ) -> Any:
        """Segment one volume (or a model's sequences, in the model's input order) with a catalog model.

        Runs `unetseg predict` in a background process. With `waitForCompletion` (scripts) it returns the
        segmentation node; otherwise a `BackgroundRun` to `poll()` (the panel) whose `result` is the node.
        `tta=None` keeps the model's test-time augmentation default, True turns mirroring TTA on, False off
        (`--tta` / `--no-tta`); `postprocess=None` keeps the model's default, False turns post-processing off.
        `backend` ("torch" or "onnx", see `segmentationBackend`) is passed on; None lets the predictor choose.
        `precision` ("auto", "fp32", "bf16", "fp16", "int8") is the windows' numeric precision: auto takes the
        fastest one this computer runs natively and the model is validated for (`--precision`).
        Writing into an existing `outputSegmentation` replaces only the segments named like this model's labels
        (see `editedSegments` to ask first). On failure or cancel the scene is left as it was.
        """
        volumes = scene_io.asVolumeList(inputVolumes)
        package = self.modelInfo(model)
        scene_io.checkInputs(volumes, package)
        check_choice("device", device, DEVICES)
        check_choice("precision", precision, PRECISIONS)
        if backend is not None:
            check_choice("backend", backend, (TORCH, ONNX))
        workDir = scene_io.newWorkFolder()
        try:
            inputPaths = [scene_io.writeVolume(v, workDir / f"input_{i}.nrrd") for i, v in enumerate(volumes)]
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        outputPath = workDir / "output.nrrd"
        args = ["predict"]
        for path in inputPaths:
            args += ["-i", str(path)]
        args += ["-m", _modelLocation(package, model), "-o", str(outputPath), "--device", device]
        args += ["--progress", "json"]
        args += [] if tta is None else ["--tta" if tta else "--no-tta"]
        args += ["--no-postprocess"] if postprocess is False else []
        args += ["--backend", backend] if backend else []
        args += ["--precision", precision] if precision != "auto" else []
        modelName = str(getattr(package, "name", model))

        def finish(run: BackgroundRun) -> Any:
            node = self.importLabelmap(outputPath, volumes[0], package.labels, outputSegmentation, showIn3D, modelName)
            segment_import.setWarnings(node, run.warnings)
            return node

        return self._run(args, finish, workDir, progressCallback, python, waitForCompletion)

    def importLabelmap(
        self,
        labelmapPath: str | os.PathLike,
        referenceVolume: Any,
        labels: Sequence[Label],
        outputSegmentation: Any = None,
        showIn3D: bool = False,
        modelName: str = "",
    ) -> Any:
        """Import a label-map file on the reference volume's grid as named, coloured segments (one import).

        A new segmentation node is created when `outputSegmentation` is None (placed beside the volume in
        the subject hierarchy, under the same transform); in an existing node only the segments named like
        `labels` are replaced, keeping their place. Every label gets a segment, empty if absent. On error
        the scene is restored.
        """
        return segment_import.importLabelmap(
            labelmapPath, referenceVolume, labels, outputSegmentation, showIn3D, modelName
        )

    def segmentationWarnings(self, segmentationNode: Any) -> list[str]:
        """What the run that wrote this node warned about its input (an MR on a CT model, a spacing far off…)."""
        return segment_import.warnings(segmentationNode)

    def showIn3D(self, segmentationNode: Any, show: bool = True) -> None:
        """Show a segmentation's surfaces in the 3D view (made from its label maps), or remove them."""
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    def editedSegments(self, segmentationNode: Any, model: str | Sequence[str]) -> list[str]:
        """Names of segments that a run of `model` would replace but that differ from what a model wrote.

        A segment counts as edited when its voxels changed since import, or when no model wrote it (the
        user made it). `model` is a catalog name/folder or a list of label names. The panel asks the
        user before replacing these.
        """
        names = [label.name for label in self.modelInfo(model).labels] if isinstance(model, str) else list(model)
        return segment_import.editedSegments(segmentationNode, names)

    # --- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, segmentationNode: Any, referenceSegmentationNode: Any, referenceVolume: Any = None) -> Any:
        """A table node with Dice, IoU, HD95 (mm) … per segment name present in both segmentations.

        Both are sampled on `referenceVolume`'s grid (default: the reference segmentation's geometry
        volume).
        """
        return training_scene.evaluationTable(segmentationNode, referenceSegmentationNode, referenceVolume)

    # --- training ------------------------------------------------------------------------------------

    def exportTrainingCases(
        self,
        segmentationNodes: Sequence[Any],
        outputFolder: str | os.PathLike,
        volumes: Sequence[Any] | None = None,
        channelName: str | None = None,
    ) -> Path:
        """Write scene cases as an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/); return it.

        Each segmentation is paired with `volumes[i]`, or with the volume its geometry comes from. Labels
        are the segment names (same name = same label across cases), numbered in order of appearance.
        `channelName` defaults to the modality guess ("CT" selects CT normalisation in the planner).
        """
        return training_scene.exportTrainingCases(segmentationNodes, outputFolder, volumes, channelName)

    def train(
        self,
        dataset: str | os.PathLike | Sequence[Any],
        variant: str = DEFAULT_TRAINING_VARIANT,
        timeBudgetMinutes: float | None = None,
        initModel: str | None = None,
        device: str = "auto",
        name: str | None = None,
        extraArgs: Sequence[str] = (),
        waitForCompletion: bool = False,
        progressCallback: ProgressCallback | None = None,
        python: str | None = None,
    ) -> Any:
        """Train (or fine-tune from `initModel`) a model with `unetseg train` in a background process.

        `dataset` is a dataset folder or a list of segmentation nodes (exported with
        `exportTrainingCases`). The model is called `name` (default: variant and start time, so runs never
        clash). When the run succeeds, it is imported into the catalog and its name is the result. Returns a
        `BackgroundRun`, or the model name with `waitForCompletion`.
        """
        check_choice("variant", variant, VARIANTS)
        check_choice("device", device, DEVICES)
        workDir = scene_io.newWorkFolder()
        try:
            if isinstance(dataset, (str, os.PathLike)):
                datasetFolder = Path(dataset)
            else:
                datasetFolder = self.exportTrainingCases(list(dataset), workDir / "dataset")
            modelFolder = workDir / "model"
            args = ["train", str(datasetFolder), "--variant", variant, "--out", str(modelFolder), "--device", device]
            args += ["--name", name or f"{variant}-{time.strftime('%Y%m%d-%H%M%S')}"]
            if timeBudgetMinutes:
                args += ["--time-budget", f"{timeBudgetMinutes:g}"]
            if initModel:
                args += ["--init", _modelLocation(self.modelInfo(initModel), initModel)]
            args += [*extraArgs, "--progress", "json"]
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return self._run(args, lambda run: self.importModel(modelFolder), workDir, progressCallback, python,
                         waitForCompletion)

    def trainingCurves(self, run: BackgroundRun, tableNode: Any = None) -> Any:
        """Fill a table node (created if None) with the run's per-epoch numbers (loss, validation Dice …)."""
        return training_scene.curvesTable(run.events, tableNode)

    def trainingPlot(self, tableNode: Any, chartNode: Any = None) -> Any:
        """A plot chart (created if None) with one line per training-curves column against the epoch."""
        return training_scene.curvesPlot(tableNode, chartNode)

    # --- devices -------------------------------------------------------------------------------------

    def deviceDescription(self) -> str:
        """What `device="auto"` will use, with GPU memory: imports torch (in this process) if installed."""
        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed (CPU inference through ONNX Runtime only)"
        import torch  # lazy: torch, only when the panel asks which device it has

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"CUDA GPU: {props.name}, {props.total_memory / 2**30:.1f} GB"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "Apple GPU (MPS), shares system memory"
        return f"CPU only ({os.cpu_count()} cores): no GPU found"

    # --- the child process ---------------------------------------------------------------------------

    def _run(
        self,
        args: list[str],
        finish: Callable[[BackgroundRun], Any],
        workDir: Path,
        progressCallback: ProgressCallback | None,
        python: str | None,
        waitForCompletion: bool,
    ) -> Any:
        """Start `unetseg <args>` as a `BackgroundRun` that removes `workDir` when done; wait for it if asked."""
        process = self._processFactory(args, python=python or pythonExecutable())
        run = BackgroundRun(process, finish, lambda: shutil.rmtree(workDir, ignore_errors=True), progressCallback)
        run.start()
        return run.wait() if waitForCompletion else run


def _importedName(run: BackgroundRun) -> str:
    """The catalog name `unetseg models import` reported in its result."""
    names = [e["name"] for e in run.events if e.get("type") == "result" and e.get("name")]
    if not names:
        raise RuntimeError("The import finished without naming the model; see the log.")
    return names[-1]


def pythonExecutable() -> str:
    """The Python that runs the core: Slicer's PythonSlicer inside Slicer, this interpreter elsewhere."""
    if hasattr(slicer, "app"):
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        candidate = Path(sys.executable).with_name(name)
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _modelLocation(package: Any, model: str) -> str:
    """What to pass to `-m`: the package's folder when it knows it, else the name or path given."""
    for attribute in ("path", "folder", "root"):
        location = getattr(package, attribute, None)
        if location:
            return str(location)
    return str(model)
