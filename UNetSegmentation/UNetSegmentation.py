"""UNetSegmentation: the Slicer module — its metadata, sample data, self-test, and the wiring to its Lib package.

The panel (`UNetSegmentationWidget`, UNetSegmentationLib/widget.py) is thin Qt glue over `UNetSegmentationLogic`
(UNetSegmentationLib/logic.py), which is also the Python-console API; both are re-exported here, where Slicer
looks for them. Nothing here imports torch or MONAI: Slicer start-up stays fast.
"""

from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from unetseg.models import card
from unetseg.samples import load_samples, reference_labels, sample_path, showcase, unseen_by
from UNetSegmentationLib.logic import UNetSegmentationLogic
from UNetSegmentationLib.widget import UNetSegmentationWidget

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


class UNetSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Developer mode → Reload and Test, or ctest): real model, real samples, CPU;
    the Dice on a case the model never saw is reported next to the training case's."""

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
        combo = widget.ui.modelComboBox
        for index in range(combo.count):  # the remembered modality and variant filter the list
            self.assertNotEqual(combo.itemText(index), combo.itemData(index), "Models show a name, not an id")
        self.delayDisplay("Panel OK")

    def test_bundled_sample_segmented_on_cpu(self):
        """A bundled sample with its model (a case it was trained on), then each shipped case it never saw."""
        logic = UNetSegmentationLogic()
        sample = showcase(logic.availableModels())
        if sample is None:
            self.delayDisplay("No bundled sample names a bundled model: nothing to segment")
            return
        backend, missing = logic.segmentationBackend(sample["model"])
        self.assertEqual(missing, [], f"Install the Python packages first: {missing}")
        dice = self._segmentAndScore(logic, sample, sample["model"], backend)
        for name, value in dice.items():
            self.assertGreaterEqual(value, self.MIN_DICE, f"Dice of {name} is {value:.3f}")
        self.delayDisplay(f"Dice on {sample['name']}, a case the model was trained on: {dice}")
        unseen = unseen_by(sample["model"])
        package = logic.modelInfo(sample["model"])
        for other in unseen:  # a demonstration model may well fail here: it must fail as its card says
            dice = self._segmentAndScore(logic, other, sample["model"], backend)
            stated = card.heldout_figure_on(package, other["name"]) or {"dice": {}}
            for name, value in stated["dice"].items():
                self.assertAlmostEqual(dice.get(name, 0.0), value, delta=0.05, msg=f"{other['name']} {name}")
            self.delayDisplay(f"Dice on {other['name']}, a case the model never saw: {dice}. "
                              f"Model card: {card.measured(package)}")
        if not unseen:
            self.delayDisplay("No case this model never saw is shipped: the Dice above says nothing about other "
                              "patients")

    def _segmentAndScore(self, logic, sample, model, backend):
        """Segment a bundled sample on the CPU; the Dice per segment against its reference, rounded."""
        self.delayDisplay(f"Segmenting {sample['name']} with {model} on the CPU ({backend})")
        volumes = [slicer.util.loadVolume(str(sample_path(name))) for name in sample["images"]]
        segmentation = logic.segment(volumes, model, device="cpu", backend=backend)
        package = logic.modelInfo(model)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, [label.name for label in package.labels])
        reference = logic.importLabelmap(sample_path(sample["reference"]), volumes[0], package.labels)
        table = logic.evaluate(segmentation, reference, volumes[0])
        dice = slicer.util.arrayFromTableColumn(table, "dice")
        scored = reference_labels(sample, names)  # a reference that labels only the spleen scores only the spleen
        return {table.GetCellText(row, 0): round(float(value), 3) for row, value in enumerate(dice)
                if table.GetCellText(row, 0) in scored}
