"""UNetSegmentation: the Slicer module (Module, Widget and self-test).

The Widget is thin Qt glue over `UNetSegmentationLogic` (UNetSegmentationLib/slicer_logic.py), which is also
the Python-console API. Nothing here imports torch or MONAI: Slicer start-up stays fast.
"""

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from UNetSegmentationLib.slicer_logic import UNetSegmentationLogic

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


class UNetSegmentationWidget(ScriptedLoadableModuleWidget):
    """The panel: binds the .ui widgets to the parameter node and the parameter node to the logic."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UNetSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNetSegmentationLogic()


class UNetSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Developer mode → Reload and Test)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
