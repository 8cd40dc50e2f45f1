"""Train the tiny MONAI bundle of `make_monai_bundle_fixture` on CT phantoms, for the parity tests.

A randomly initialised network's scores sit near their ties, which says little about parity; a trained one is
confident where a real model is and uncertain only at edges. This trains the bundle's UNet (4-8-16 channels) for
300 iterations (about two minutes on 2 CPU cores) on jittered phantoms (`ct_phantom`: body, a liver-like and a
spleen-like organ), passed through the bundle's own preprocessing with MONAI's transforms, and writes the bundle
(configs + ``models/model.pt``, 58 kB) that ``Testing/fixtures/monai/tiny_trained_bundle`` holds.

    python benchmarks/train_monai_bundle_fixture.py [OUT] [--iterations 300]

prints the Dice of the trained network against the phantom's own labels on an unseen phantom: 0.92 (liver-like) and
0.90 (spleen-like) for the checked-in bundle, so its labels are not lopsided.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from make_monai_bundle_fixture import NETWORK_DEFS, ct_phantom, write_bundle

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "Testing" / "fixtures" / "monai" / "tiny_trained_bundle"
ROI = (32, 32, 32)


def _case(seed: int, rng) -> dict:
    """One training case as MONAI holds it: image and label MetaTensors (channel first, RAS affine)."""
    import numpy as np
    import torch
    from monai.data import MetaTensor

    shape = tuple(int(n) for n in rng.integers((36, 32, 18), (60, 52, 30)))
    spacing = rng.uniform((0.7, 0.7, 2.0), (1.2, 1.2, 3.0))
    hu, labels = ct_phantom(shape, seed=seed, jitter=0.15)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS identity direction, in RAS
    as_meta = lambda a: MetaTensor(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)[None])), affine=affine)  # noqa: E731
    return {"image": as_meta(hu), "label": as_meta(labels.astype(np.float32))}


def train_bundle(folder: Path, iterations: int = 300, seed: int = 0) -> Path:
    """Write the bundle's configs into ``folder`` and its network trained for ``iterations`` batches of two."""
    import numpy as np
    import torch
    from monai import transforms as mt
    from monai.losses import DiceCELoss
    from monai.networks import nets

    folder = write_bundle(folder, "unet", weights=False)
    keys = ["image", "label"]
    preprocess = mt.Compose(
        [
            mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            mt.Spacingd(keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
            mt.ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
            mt.SpatialPadd(keys, ROI),
            mt.RandSpatialCropd(keys, ROI, random_size=False),
        ]
    )
    preprocess.set_random_state(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = nets.UNet(**{k: v for k, v in NETWORK_DEFS["unet"].items() if not k.startswith("_")})
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    for iteration in range(iterations):
        cases = [preprocess(_case(1000 + 2 * iteration + i, rng)) for i in range(2)]
        image = torch.stack([c["image"].as_tensor() for c in cases])
        label = torch.stack([c["label"].as_tensor() for c in cases])
        optimiser.zero_grad()
        value = loss(network(image), label)
        value.backward()
        optimiser.step()
        if iteration % 10 == 0 or iteration == iterations - 1:
            print(f"iteration {iteration}: loss {value.item():.3f}")
    (folder / "models").mkdir(exist_ok=True)
    torch.save(network.eval().state_dict(), folder / "models" / "model.pt")
    return folder


def unseen_dice(folder: Path) -> dict[int, float]:
    """Dice per label of the trained network on an unseen phantom, through the bundle's preprocessing."""
    import numpy as np
    import torch
    from monai import transforms as mt
    from monai.inferers import sliding_window_inference
    from monai.networks import nets

    case = _case(7, np.random.default_rng(7))
    pre = mt.Compose(
        [
            mt.Orientationd(["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            mt.Spacingd(["image", "label"], pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
            mt.ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        ]
    )(case)
    network = nets.UNet(**{k: v for k, v in NETWORK_DEFS["unet"].items() if not k.startswith("_")})
    network.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        scores = sliding_window_inference(pre["image"][None], ROI, 4, network.eval(), overlap=0.5, mode="gaussian")
    predicted, truth = scores[0].argmax(0).numpy(), pre["label"][0].numpy()
    return {
        v: float(2 * ((predicted == v) & (truth == v)).sum() / max((predicted == v).sum() + (truth == v).sum(), 1))
        for v in (1, 2)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=FIXTURE)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args(argv)
    folder = train_bundle(args.out, args.iterations)
    print(f"wrote {folder}; Dice on an unseen phantom: {unseen_dice(folder)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
