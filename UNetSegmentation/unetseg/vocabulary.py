"""The project's vocabulary, one home for each list and default: variants, modalities, devices, HU windows, windows.

Torch-free and numpy-free: the CLI, the trainer, the predictor, the Slicer logic and the panel's enums all import
their choices from here, so a new variant or device is added in one place.
"""

from __future__ import annotations

import math

# Network variants, in the order the panel and `unetseg train --help` show them, with their human titles.
VARIANT_TITLES = {
    "unet": "U-Net",
    "vnet": "V-Net",
    "unetpp": "U-Net++",
    "attention_unet": "Attention U-Net",
    "nnunet": "nnU-Net (auto-configured)",
}
VARIANTS = tuple(VARIANT_TITLES)
DEFAULT_TRAINING_VARIANT = "nnunet"
# Imported models (`unetseg models import`): the manifest's variant (and preprocessing kind) names the tool whose
# network, preprocessing and output rules the predictor reproduces.
NNUNET_VARIANT, MONAI_VARIANT = "nnunetv2", "monai"
IMPORTED_VARIANT_TITLES = {NNUNET_VARIANT: "nnU-Net v2", MONAI_VARIANT: "MONAI bundle"}
IMPORTED_VARIANTS = tuple(IMPORTED_VARIANT_TITLES)

# Imaging modalities as manifests store them ("MR", not "MRI"), with the titles a person reads.
MODALITY_TITLES = {"CT": "CT", "MR": "MRI", "XR": "X-ray"}
MODALITIES = tuple(MODALITY_TITLES)

# Compute devices: "auto" picks CUDA, then Apple MPS, then the CPU (`unetseg.devices.resolve_device`).
DEVICE_TITLES = {"auto": "Auto", "cuda": "GPU (CUDA)", "mps": "Apple GPU (MPS)", "cpu": "CPU"}
DEVICES = tuple(DEVICE_TITLES)

# Inference engines: PyTorch, or ONNX Runtime on a model's ONNX export (no PyTorch needed), or OpenVINO on the same
# export (optional, CPU only; the fastest on this project's CPUs, see the README's inference speed table); "auto"
# picks the fastest measured one that is installed and can run the model (`engines.choose_backend`).
BACKENDS = ("torch", "onnx", "openvino", "auto")

# Numeric precision of the network's windows (`unetseg predict --precision`): "auto" picks the fastest one that this
# device runs natively and the model is validated for (`unetseg.inference.precision`); int8 is ONNX Runtime's
# statically quantised export. A lower precision is validated when, on a few windows of a sample, at least
# MIN_FOREGROUND_AGREEMENT of the foreground voxels keep their fp32 label and every label keeps MIN_LABEL_DICE.
PRECISION_TITLES = {"auto": "Auto", "fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
PRECISIONS = tuple(PRECISION_TITLES)
LOWER_PRECISIONS = ("bf16", "fp16", "int8")
MIN_FOREGROUND_AGREEMENT, MIN_LABEL_DICE = 0.995, 0.99

# Hounsfield windows of the CT prior channels: lung (air outside the body falls in it too), soft tissue and
# bone — name, lower and upper bound in HU. The network's add-on draws them as soft (sigmoid) windows, the
# preprocessing helper `hu_prior_channels` as binary masks with both bounds included.
HU_PRIOR_WINDOWS = (("lung", -1000.0, -400.0), ("soft tissue", -100.0, 100.0), ("bone", 400.0, math.inf))

# Sliding-window inference: the share of overlap between neighbouring windows (nnU-Net's step 0.5) and the
# windows per forward pass on the CPU for 2D and 3D networks (the trainer's validation uses the same).
DEFAULT_OVERLAP = 0.5
DEFAULT_CPU_WINDOW_BATCH = {2: 4, 3: 1}
# Ceiling on the windows of one segmentation (`unetseg predict --max-windows`): a whole-body CT at nnU-Net's patch
# needs a few hundred to a few thousand; far beyond it, the input's geometry is almost certainly wrong.
DEFAULT_MAX_WINDOWS = 20_000

# Training augmentations that a plan switches on or off by name (`unetseg train --augment NAME=on|off`), with what each
# does; their probabilities and ranges live in `unetseg.training.augment_*`. Rotation, scaling and mirroring are
# always on (nnU-Net's; `--mirror-axes` limits the mirroring). "slab" and "thick_slices" act on 3D patches only.
AUGMENTATION_TITLES = {
    "intensity": "nnU-Net's intensity set (noise, blur, brightness, contrast, low resolution, gamma)",
    "elastic": "elastic deformation (nnU-Net v2 leaves it off)",
    "fov": "random field of view, an off-centre box of half to all of each patch axis kept and the rest zeroed",
    "slab": "random slab, a few consecutive slices along one axis kept and the rest zeroed (3D)",
    "thick_slices": "thick slices (1.5-5x) along one axis, resampled back to the patch grid (3D)",
    "gamma": "a second, wider gamma (0.5-2) on top of nnU-Net's",
    "inversion": "contrast inversion (bright becomes dark)",
    "bias_field": "smooth multiplicative bias field on the signal",
    "label_intensities": "each structure's voxels a random Gaussian intensity, the background kept (SynthSeg-like)",
    "intensity_remap": "a random intensity curve that may rise and fall, reordering tissue contrasts (sequence change)",
}
AUGMENTATIONS = tuple(AUGMENTATION_TITLES)
# nnU-Net v2's own augmentation (a settings object built without names gets it), and the defaults per modality: CT
# varies coverage and slice thickness, and the organs' intensities (per-structure and a random curve: contrast phases
# move an organ by 50-100 HU; no inversion or bias field, which CT does not have); MRI varies contrast strongly, since
# sequences and scanners differ far more than anatomy; X-ray (2D) varies field of view, exposure curve (gamma) and
# the heel effect's smooth gradient (bias field). Measured (README, training augmentations): the bundled spleen
# recipe trained on one patient went from Dice 0.00 to 0.56 on the other with the two CT intensity ones.
NNUNET_AUGMENTATIONS = ("intensity",)
DEFAULT_AUGMENTATIONS = {
    "CT": ("intensity", "fov", "slab", "thick_slices", "label_intensities", "intensity_remap"),
    "MR": ("intensity", "fov", "slab", "thick_slices", "gamma", "inversion", "bias_field", "label_intensities",
           "intensity_remap"),
    "XR": ("intensity", "fov", "gamma", "bias_field"),
}


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise a ValueError that lists the choices."""
    if value not in allowed:
        raise ValueError(f"Unknown {kind} {value!r}; choose one of {', '.join(allowed)}.")
    return value
