"""Which switchable augmentations a training run uses: a small value recorded in the plan, so a run is reproducible.

The names, what each does and the defaults per modality live in `unetseg.vocabulary`; the transforms in
`augmentation`, `augment_acquisition` and `augment_intensity`. Torch-free (the plan and the CLI read it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from unetseg.vocabulary import AUGMENTATIONS, DEFAULT_AUGMENTATIONS, NNUNET_AUGMENTATIONS, check_choice


@dataclass(frozen=True)
class AugmentationSettings:
    """The augmentations switched on, by name (`vocabulary.AUGMENTATIONS`); the rest are off.

    Built without names it is nnU-Net v2's own set; `for_modality` gives the project's defaults for CT, MR or XR.
    """

    enabled: frozenset[str] = field(default_factory=lambda: frozenset(NNUNET_AUGMENTATIONS))

    def __post_init__(self) -> None:
        names = frozenset(self.enabled)
        for name in names:
            check_choice("augmentation", name, AUGMENTATIONS)
        object.__setattr__(self, "enabled", names)

    def __contains__(self, name: str) -> bool:
        return check_choice("augmentation", name, AUGMENTATIONS) in self.enabled

    @classmethod
    def for_modality(cls, modality: str) -> AugmentationSettings:
        """The defaults for a modality (CT, MR or XR; see `vocabulary.DEFAULT_AUGMENTATIONS`)."""
        return cls(frozenset(DEFAULT_AUGMENTATIONS[check_choice("modality", modality, tuple(DEFAULT_AUGMENTATIONS))]))

    def switched(self, switches: Mapping[str, bool] | Iterable[tuple[str, bool]]) -> AugmentationSettings:
        """These settings with the given names switched on (True) or off (False)."""
        on = set(self.enabled)
        for name, value in dict(switches).items():
            check_choice("augmentation", name, AUGMENTATIONS)
            (on.add if value else on.discard)(name)
        return AugmentationSettings(frozenset(on))

    def to_dict(self) -> dict[str, bool]:
        """Every name with its switch, in the vocabulary's order (the plan file's ``augmentation`` entry)."""
        return {name: name in self.enabled for name in AUGMENTATIONS}

    @classmethod
    def from_dict(cls, switches: Mapping[str, bool]) -> AugmentationSettings:
        """Inverse of `to_dict`; a name the file does not list is off (a plan written before it existed)."""
        return cls(frozenset(name for name, value in switches.items() if value))  # names checked on creation

    def summary(self) -> str:
        """The names switched on, in the vocabulary's order (or "none")."""
        return ", ".join(name for name in AUGMENTATIONS if name in self.enabled) or "none"
