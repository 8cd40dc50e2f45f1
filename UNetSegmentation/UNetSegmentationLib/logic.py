"""`UNetSegmentationLogic`: the bridge between Slicer's MRML scene and the headless core (also the console API).

Volumes leave the scene as temporary NRRD files written by Slicer's own storage nodes (so the geometry is
exactly Slicer's), the core runs in a background process (`python -m UNetSegmentationLib predict|train …
--progress json`, see process.py) that the caller polls, and the resulting label map comes back through a
storage node and is imported once into a segmentation node. The scene is only touched when a run has
succeeded, and an import that fails half-way is rolled back, so failure and cancel leave it as it was.

Imports `slicer` and `vtk`, never `qt`: headless tests run it on slicer-core's real MRML classes.

Example (Slicer's Python console)::

    from UNetSegmentationLib.logic import UNetSegmentationLogic
    logic = UNetSegmentationLogic()
    print(logic.availableModels(modality="CT"))
    segmentation = logic.segment(slicer.util.getNode("CTChest"), model="...", device="auto")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from unetseg.image import Label
from unetseg.jobs.process import BackgroundProcess
from unetseg.modality import ModalityGuess, guess_modality

MODULE_NAME = "UNetSegmentation"
DEVICES = ("auto", "cuda", "mps", "cpu")
VARIANTS = ("unet", "vnet", "unetpp", "attention_unet", "nnunet")
MODEL_TAG = "UNetSegmentation.Model"
FINGERPRINT_TAG = "UNetSegmentation.Fingerprint"
LABEL_VALUE_TAG = "UNetSegmentation.LabelValue"
TRAINING_FILE_ENDING = ".nrrd"
# Numbers in the trainer's progress events that are not curves to plot against the epoch.
_NOT_CURVES = {"fraction", "iteration", "eta_s"}

ProgressCallback = Callable[[dict], None]


class BackgroundRun:
    """One background job (a segmentation or a training run) that the caller polls from the GUI thread.

    `poll()` forwards the child's events to `progressCallback` and, once the child has exited, finishes
    the job on the calling thread (MRML is only touched there): `result` on success, `error` otherwise.
    Temporary files are removed in every case.
    """

    def __init__(
        self,
        process: BackgroundProcess,
        finish: Callable[[], Any],
        cleanup: Callable[[], None],
        progressCallback: ProgressCallback | None = None,
    ) -> None:
        self.process = process
        self.progressCallback = progressCallback
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.cancelled = False
        self.events: list[dict] = []
        self._finish = finish
        self._cleanup = cleanup
        self._done = False

    @property
    def running(self) -> bool:
        """True until the job has finished (successfully or not)."""
        return not self._done

    @property
    def succeeded(self) -> bool:
        """True once the job has finished without error."""
        return self._done and self.error is None

    def start(self) -> BackgroundRun:
        """Launch the child process; on failure to launch, clean up and re-raise."""
        try:
            self.process.start()
        except Exception:
            self._done = True
            self._cleanup()
            raise
        return self

    def poll(self) -> bool:
        """Forward new events; finish the job when the child is done. Returns True while still running."""
        if self._done:
            return False
        exited = not self.process.running
        for event in self.process.poll():
            self._report(event)
        if exited:
            self._complete()
        return not self._done

    def cancel(self) -> None:
        """Kill the child process tree; the job then finishes as cancelled on the next `poll`."""
        if not self._done:
            self.process.cancel()
            self.poll()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Poll until the job is done and return its result; raise its error (TimeoutError after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"The background job did not finish within {timeout} s and was cancelled.")
            time.sleep(interval)
        if self.exception is not None:
            raise self.exception
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.result

    def _report(self, event: dict) -> None:
        self.events.append(event)
        if self.progressCallback is not None:
            self.progressCallback(event)

    def _complete(self) -> None:
        try:
            if self.process.cancelled:
                self.cancelled = True
                self.error = "Cancelled."
            elif self.process.returncode != 0:
                self.error = self._failureMessage()
            else:
                self.result = self._finish()
        except Exception as exc:  # reported through `error`; `wait` re-raises it with its traceback
            self.exception = exc
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._done = True
            self._cleanup()
        if self.error is not None:
            self._report({"type": "error", "stage": "finished", "message": self.error})

    def _failureMessage(self) -> str:
        """The child's own error event if it sent one, else the tail of its stderr."""
        errors = [e.get("message", "") for e in self.events if e.get("type") == "error"]
        if errors:
            return errors[-1]
        tail = "\n".join(self.process.stderr.strip().splitlines()[-15:])
        return f"The background process failed (exit code {self.process.returncode}).\n{tail}".strip()


class UNetSegmentationLogic:
    """Segment, evaluate and train from Slicer's scene; usable from the Python console without the panel.

    The model catalog is opened lazily, so constructing the logic imports nothing heavy. `catalog` and
    `processFactory` (called like `BackgroundProcess(args, python=…)`) can be replaced, e.g. in tests.
    """

    def __init__(
        self, catalog: Any = None, processFactory: Callable[..., BackgroundProcess] = BackgroundProcess
    ) -> None:
        self._catalog = catalog
        self._processFactory = processFactory

    # --- catalog -------------------------------------------------------------------------------------

    @property
    def catalog(self) -> Any:
        """The model catalog (bundled and user models)."""
        if self._catalog is None:
            from unetseg.models.catalog import Catalog

            self._catalog = Catalog()
        return self._catalog

    def availableModels(self, modality: str | None = None, variant: str | None = None) -> list[str]:
        """Names of the catalog's models, optionally only those for a modality (CT/MR/XR) and variant."""
        return list(self.catalog.names(modality=modality, variant=variant))

    def modelInfo(self, model: str) -> Any:
        """The validated model package for a catalog name or a model folder (raises if it is invalid)."""
        return self.catalog.get(str(model))

    def importModel(self, path: str | os.PathLike) -> str:
        """Validate a model zip or folder, copy it into the user's model folder; return its catalog name."""
        return self.catalog.import_model(Path(path))

    # --- inputs --------------------------------------------------------------------------------------

    def guessModality(self, volumeNode: Any) -> ModalityGuess:
        """The volume's modality: its DICOM series' Modality when loaded from DICOM, else a voxel-based guess."""
        array = slicer.util.arrayFromVolume(volumeNode) if volumeNode.GetImageData() else None
        return guess_modality(array, _dicomModality(volumeNode))

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
    ) -> Any:
        """Segment one volume (or a model's sequences, in the model's input order) with a catalog model.

        Runs `unetseg predict` in a background process. With `waitForCompletion` (scripts) it returns the
        segmentation node; otherwise a `BackgroundRun` to `poll()` (the panel) whose `result` is the node.
        `tta=None` keeps the model's test-time augmentation default, True turns mirroring TTA on, False off
        (`--tta` / `--no-tta`); `postprocess=None` keeps the model's default, False turns post-processing off.
        Writing into an existing `outputSegmentation` replaces only the segments named like this model's labels
        (see `editedSegments` to ask first). On failure or cancel the scene is left as it was.
        """
        volumes = _asVolumeList(inputVolumes)
        package = self.modelInfo(model)
        _checkInputs(volumes, package)
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        workDir = _newWorkFolder()
        try:
            inputPaths = [_writeVolume(v, workDir / f"input_{i}.nrrd") for i, v in enumerate(volumes)]
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
        modelName = str(getattr(package, "name", model))

        def finish() -> Any:
            return self.importLabelmap(outputPath, volumes[0], package.labels, outputSegmentation, showIn3D, modelName)

        process = self._processFactory(args, python=python or pythonExecutable())
        run = BackgroundRun(process, finish, lambda: shutil.rmtree(workDir, ignore_errors=True), progressCallback)
        run.start()
        return run.wait() if waitForCompletion else run

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
        scene = slicer.mrmlScene
        if referenceVolume.GetScene() is not scene:
            raise RuntimeError("The input volume was removed from the scene while it was being segmented.")
        if outputSegmentation is not None and outputSegmentation.GetScene() is not scene:
            raise RuntimeError("The output segmentation was removed from the scene during the run.")
        labelImage = _readLabelmap(Path(labelmapPath), referenceVolume)
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

    def editedSegments(self, segmentationNode: Any, model: str | Sequence[str]) -> list[str]:
        """Names of segments that a run of `model` would replace but that differ from what a model wrote.

        A segment counts as edited when its voxels changed since import, or when no model wrote it (the
        user made it). `model` is a catalog name/folder or a list of label names. The panel asks the
        user before replacing these.
        """
        names = [label.name for label in self.modelInfo(model).labels] if isinstance(model, str) else list(model)
        segmentation = segmentationNode.GetSegmentation()
        edited = []
        for segmentId in segmentation.GetSegmentIDs():
            segment = segmentation.GetSegment(segmentId)
            if segment.GetName() not in names:
                continue
            stored = _segmentTag(segment, FINGERPRINT_TAG)
            if stored is None or stored != _segmentFingerprint(segmentation, segmentId):
                edited.append(segment.GetName())
        return edited

    # --- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, segmentationNode: Any, referenceSegmentationNode: Any, referenceVolume: Any = None) -> Any:
        """A table node with Dice, IoU, HD95 (mm) … per segment name present in both segmentations.

        Both are sampled on `referenceVolume`'s grid (default: the reference segmentation's geometry
        volume).
        """
        from unetseg.evaluation.metrics import compute_metrics

        volume = referenceVolume or _geometryVolume(referenceSegmentationNode) or _geometryVolume(segmentationNode)
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
        if not segmentationNodes:
            raise ValueError("Select at least one segmentation to train on.")
        pairs = _trainingPairs(segmentationNodes, volumes)
        labelValues = _labelValuesFromNames(segmentationNodes)
        folder = Path(outputFolder)
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        for index, (segmentationNode, volume) in enumerate(pairs):
            case = f"case_{index:03d}"
            _writeVolume(volume, folder / "imagesTr" / f"{case}_0000{TRAINING_FILE_ENDING}")
            labelArray = _labelArray(segmentationNode, volume, labelValues)
            _writeLabelArray(labelArray, volume, folder / "labelsTr" / f"{case}{TRAINING_FILE_ENDING}")
        channel = channelName or self.guessModality(pairs[0][1]).modality or "image"
        dataset = {
            "channel_names": {"0": channel},
            "labels": {"background": 0, **labelValues},
            "numTraining": len(pairs),
            "file_ending": TRAINING_FILE_ENDING,
            "name": "Slicer scene cases",
        }
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
        return folder

    def train(
        self,
        dataset: str | os.PathLike | Sequence[Any],
        variant: str = "nnunet",
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
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        if device not in DEVICES:
            raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        workDir = _newWorkFolder()
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
        process = self._processFactory(args, python=python or pythonExecutable())
        run = BackgroundRun(
            process, lambda: self.importModel(modelFolder), lambda: shutil.rmtree(workDir, ignore_errors=True),
            progressCallback,
        )
        run.start()
        return run.wait() if waitForCompletion else run

    def trainingCurves(self, run: BackgroundRun, tableNode: Any = None) -> Any:
        """Fill a table node (created if None) with the run's per-epoch numbers (loss, validation Dice …)."""
        rows = _epochRows(run.events)
        table = tableNode or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Training curves")
        columns = ["epoch", *sorted({k for row in rows for k in row} - {"epoch"})]
        arrays = {c: np.array([row.get(c, math.nan) for row in rows], dtype=float) for c in columns}
        slicer.util.updateTableFromArray(table, [arrays[c] for c in columns], columns)
        return table

    def trainingPlot(self, tableNode: Any, chartNode: Any = None) -> Any:
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

    # --- devices -------------------------------------------------------------------------------------

    def deviceDescription(self) -> str:
        """What `device="auto"` will use, with GPU memory: imports torch (in this process) if installed."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed (CPU inference through ONNX Runtime only)"
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"CUDA GPU: {props.name}, {props.total_memory / 2**30:.1f} GB"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "Apple GPU (MPS), shares system memory"
        return f"CPU only ({os.cpu_count()} cores): no GPU found"


# --- helpers: processes and files ----------------------------------------------------------------------


def pythonExecutable() -> str:
    """The Python that runs the core: Slicer's PythonSlicer inside Slicer, this interpreter elsewhere."""
    if hasattr(slicer, "app"):
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        candidate = Path(sys.executable).with_name(name)
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _newWorkFolder() -> Path:
    """A fresh temporary folder (under Slicer's temporary path inside Slicer)."""
    base = getattr(getattr(slicer, "app", None), "temporaryPath", None)
    return Path(tempfile.mkdtemp(prefix="UNetSegmentation-", dir=base or None))


def _modelLocation(package: Any, model: str) -> str:
    """What to pass to `-m`: the package's folder when it knows it, else the name or path given."""
    for attribute in ("path", "folder", "root"):
        location = getattr(package, attribute, None)
        if location:
            return str(location)
    return str(model)


def _asVolumeList(inputVolumes: Any) -> list[Any]:
    volumes = list(inputVolumes) if isinstance(inputVolumes, (list, tuple)) else [inputVolumes]
    if not volumes or any(v is None for v in volumes):
        raise ValueError("Select an input volume.")
    for volume in volumes:
        if not volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLVectorVolumeNode"):
            raise ValueError(f"'{volume.GetName()}' is a {volume.GetClassName()}, not an image volume.")
        if volume.GetImageData() is None:
            raise ValueError(f"'{volume.GetName()}' has no image data.")
    return volumes


def _checkInputs(volumes: list[Any], package: Any) -> None:
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
    return np.allclose(_ijkToRas(a), _ijkToRas(b), atol=tolerance)


def _ijkToRas(volume: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _writeVolume(volume: Any, path: Path) -> Path:
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
    scalar.SetIJKToRASMatrix(_vtkMatrix(_ijkToRas(volume)))
    slicer.util.updateVolumeFromArray(scalar, luminance)
    scalar.SetName(volume.GetName())
    return scalar


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    return slicer.util.vtkMatrixFromArray(array)


def _readLabelmap(path: Path, referenceVolume: Any) -> slicer.vtkOrientedImageData:
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
    image.SetGeometryFromImageToWorldMatrix(_vtkMatrix(_ijkToRas(node)))
    return image


def _samePhysicalGrid(a: Any, b: Any, tolerance: float = 1e-3) -> bool:
    """True when two volumes sample the same points, even if a reader flipped or permuted the index axes."""
    return np.allclose(_cornerPoints(a), _cornerPoints(b), atol=tolerance * max(1.0, max(b.GetSpacing())))


def _cornerPoints(volume: Any) -> np.ndarray:
    """The RAS positions of the 8 corner voxel centres, sorted (independent of axis order and direction)."""
    dims = volume.GetImageData().GetDimensions()
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    points = (_ijkToRas(volume) @ corners.T).T[:, :3]
    return points[np.lexsort(np.round(points, 3).T[::-1])]


def _writeLabelArray(labelArray: np.ndarray, volume: Any, path: Path) -> None:
    """Write a (k, j, i) label array on `volume`'s grid with Slicer's volume storage node."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetIJKToRASMatrix(_vtkMatrix(_ijkToRas(volume)))
    slicer.util.updateVolumeFromArray(node, labelArray)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise RuntimeError(f"Could not write the label map {path}.")


# --- helpers: segments ---------------------------------------------------------------------------------


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
    from vtk.util.numpy_support import vtk_to_numpy

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


def _geometryVolume(segmentationNode: Any) -> Any:
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


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


def _trainingPairs(segmentationNodes: Sequence[Any], volumes: Sequence[Any] | None) -> list[tuple[Any, Any]]:
    """(segmentation, volume) pairs: the given volumes, else each segmentation's geometry volume."""
    if volumes is not None and len(volumes) != len(segmentationNodes):
        raise ValueError(
            f"{len(segmentationNodes)} segmentations but {len(volumes)} volumes; give one volume per segmentation."
        )
    pairs = []
    for index, segmentationNode in enumerate(segmentationNodes):
        volume = volumes[index] if volumes is not None else _geometryVolume(segmentationNode)
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


def _epochRows(events: list[dict]) -> list[dict]:
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
