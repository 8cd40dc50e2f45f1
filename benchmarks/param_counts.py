"""Print the parameter counts of every network variant at the paper widths, against the seed's table.

Usage: ``python benchmarks/param_counts.py [--width W] [--in-channels N] [--num-classes K]``.
Models are built, never run, so this takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse

from unetseg.networks.factory import build_network
from unetseg.vocabulary import VARIANTS

# The seed's reference counts (1 input channel, 2 classes, paper width) and where each comes from.
SEED = {
    ("unet", 2): (31.0, "Ronneberger et al. 2015, 64→1024"),
    ("vnet", 3): (48.0, "Milletari et al. 2016 (MONAI's VNet: 45.6 M)"),
    ("unetpp", 2): (42.0, "seed table; MONAI's up-convolutions halve the up-sampled channels"),
    ("attention_unet", 2): (35.0, "seed table; MONAI merges each decoder level with one conv, not two"),
    ("nnunet", 3): (31.2, "nnU-Net 3D generic network, 6 stages 32→320"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=2)
    args = parser.parse_args()
    print(f"{'variant':<16}{'dims':>5}{'params (M)':>12}{'seed (M)':>10}{'diff':>8}  reference")
    for variant in VARIANTS:
        for dims in (2, 3):
            config = {
                "variant": variant,
                "spatial_dims": dims,
                "in_channels": args.in_channels,
                "num_classes": args.num_classes,
                "width": args.width,
            }
            model = build_network(config)
            millions = sum(p.numel() for p in model.parameters()) / 1e6
            seed, source = SEED.get((variant, dims), (None, ""))
            applies = seed is not None and args.width == 1.0 and (args.in_channels, args.num_classes) == (1, 2)
            diff = f"{(millions / seed - 1) * 100:+.1f}%" if applies else ""
            seed_text = f"{seed:.1f}" if applies else ""
            print(f"{variant:<16}{dims:>5}{millions:>12.2f}{seed_text:>10}{diff:>8}  {source if applies else ''}")


if __name__ == "__main__":
    main()
