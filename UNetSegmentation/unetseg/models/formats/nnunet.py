"""nnU-Net v2 trained-model folders and zips, read without ``nnunetv2`` and without unpickling code.

Accepted layouts (``PATH`` given to :func:`read_nnunet_model`):

- the trained-model folder itself, ``<trainer>__<plans>__<configuration>/`` with ``dataset.json``, ``plans.json``
  and ``fold_*/checkpoint_final.pth``;
- the ``Dataset###_Name/`` folder above it (one or several configurations: pick one with ``configuration``);
- a zip of either, as ``nnUNetv2_export_model_to_zip`` writes (the ``Dataset###_Name/`` level may be there or not).
  Only the files needed are read out of the zip, after :func:`unetseg.models.archive.check_zip` has refused
  absolute paths, ``..``, symbolic links and zip bombs. The user's folder or zip is never written to.

Folds: by default every ``fold_*`` folder holding the checkpoint (``fold_all`` included; note that
``nnUNetv2_predict`` itself defaults to folds 0–4); ask for others with ``folds``. A fold asked for that is missing
is refused. Checkpoint: ``checkpoint_final.pth`` unless ``checkpoint`` names another (``checkpoint_best.pth``).

Each checkpoint is opened with :func:`unetseg.models.formats.checkpoint.load_checkpoint` (``weights_only=True`` and
an explicit allow-list of numpy scalar/dtype reconstructors). Its ``network_weights`` must load strictly into the
network the plans describe (built with ``dynamic-network-architectures``, as nnU-Net builds it); the tensors that
the decoder repeats under ``decoder.encoder.*`` are stored once. Refused with a message naming the cause: a cascade
configuration, a trainer whose network is not the plans' one (``nnUNetTrainerBN``, the Primus trainers, or any
trainer whose weights do not fit the plans' network), a network class other than ``PlainConvUNet`` /
``ResidualEncoderUNet``, folds that disagree, a checkpoint trained with a different architecture than
``plans.json`` describes, and anything a hostile file could use to run code.

The result, :class:`NnUNetModel`, is a plain description: network build spec, per-fold state dicts, labels,
channels, preprocessing, mirroring axes and provenance (file hashes). Converting it to this project's package is a
separate step.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from unetseg.models.archive import MAX_IMPORT_BYTES, check_zip, extract_members
from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import (
    drop_aliases,
    fit_problems,
    load_checkpoint,
    restore_aliases,
    sha256_file,
    tensor_dict,
    unwrap_prefixes,
)
from unetseg.models.formats.nnunet_layout import (
    MODEL_FOLDER_RE,
    choose_folds,
    fold_key,
    folder_roots,
    folds_with,
    pick_model,
    zip_roots,
)
from unetseg.models.formats.nnunet_network import NetworkSpec, network_spec, same_architecture
from unetseg.models.formats.nnunet_plans import (
    NnUNetLabels,
    NnUNetPreprocessing,
    check_not_cascade,
    parse_channels,
    parse_labels,
    parse_preprocessing,
    resolve_configuration,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_NAME = "nnunetv2"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"

# Trainers of nnunetv2 2.8.1 whose build_network_architecture is nnUNetTrainer's (the plans' network). Read from the
# package: every nnUNetTrainer subclass that does not override it.
KNOWN_PLAN_TRAINERS = frozenset((
    "nnUNetTrainer", "nnUNetTrainerAdam", "nnUNetTrainerAdam1en3", "nnUNetTrainerAdam3en4", "nnUNetTrainerAdan",
    "nnUNetTrainerAdan1en1", "nnUNetTrainerAdan1en3", "nnUNetTrainerAdan3en4", "nnUNetTrainerAdanCosAnneal",
    "nnUNetTrainerBenchmark_5epochs", "nnUNetTrainerBenchmark_5epochs_noDataLoading", "nnUNetTrainerCELoss",
    "nnUNetTrainerCELoss_5epochs", "nnUNetTrainerCosAnneal", "nnUNetTrainerDA5", "nnUNetTrainerDA5Segord0",
    "nnUNetTrainerDA5_10epochs", "nnUNetTrainerDA5ord0", "nnUNetTrainerDiceCELoss_noSmooth",
    "nnUNetTrainerDiceLoss", "nnUNetTrainerDiceTopK10Loss", "nnUNetTrainerNoDA", "nnUNetTrainerNoDeepSupervision",
    "nnUNetTrainerNoMirroring", "nnUNetTrainerTopk10Loss", "nnUNetTrainerTopk10LossLS01",
    "nnUNetTrainerVanillaAdam", "nnUNetTrainerVanillaAdam1en3", "nnUNetTrainerVanillaAdam3en4",
    "nnUNetTrainer_100epochs", "nnUNetTrainer_10epochs", "nnUNetTrainer_1epoch", "nnUNetTrainer_2000epochs",
    "nnUNetTrainer_2000epochs_NoMirroring", "nnUNetTrainer_20epochs", "nnUNetTrainer_250epochs",
    "nnUNetTrainer_250epochs_NoMirroring", "nnUNetTrainer_4000epochs", "nnUNetTrainer_4000epochs_NoMirroring",
    "nnUNetTrainer_500epochs", "nnUNetTrainer_50epochs", "nnUNetTrainer_5epochs", "nnUNetTrainer_750epochs",
    "nnUNetTrainer_8000epochs", "nnUNetTrainer_8000epochs_NoMirroring", "nnUNetTrainer_DASegOrd0",
    "nnUNetTrainer_DASegOrd0_NoMirroring", "nnUNetTrainer_noDummy2DDA", "nnUNetTrainer_onlyMirror01",
    "nnUNetTrainer_onlyMirror01_1500ep", "nnUNetTrainer_onlyMirror01_DA5", "nnUNetTrainer_onlyMirror01_DASegOrd0",
    "nnUNetTrainer_probabilisticOversampling", "nnUNetTrainer_probabilisticOversampling_010",
    "nnUNetTrainer_probabilisticOversampling_033", "nnUNetTrainer_warmup", "nnUNet_Trainer_BS8",
))
# ... and those that build another network than the plans describe.
OTHER_NETWORK_TRAINERS = re.compile(r"^(nnUNetTrainerBN.*|.*Primus.*)$")


@dataclass
class NnUNetModel:
    """An nnU-Net v2 model, read and checked; everything but ``state_dicts`` is JSON-serialisable."""

    folder_name: str
    dataset_name: str
    trainer: str
    plans_name: str
    configuration: str
    folds: list[str]
    checkpoint: str
    network: NetworkSpec
    state_dicts: dict[str, dict[str, torch.Tensor]]
    labels: NnUNetLabels
    channel_names: list[str]
    preprocessing: NnUNetPreprocessing
    mirror_axes: list[int] | None
    provenance: dict
    dataset_json: dict
    plans: dict
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """Everything except the tensors, as JSON-ready data."""
        return {
            "format": FORMAT_NAME, "folder_name": self.folder_name, "dataset_name": self.dataset_name,
            "trainer": self.trainer, "plans_name": self.plans_name, "configuration": self.configuration,
            "folds": list(self.folds), "checkpoint": self.checkpoint, "network": self.network.to_dict(),
            "labels": self.labels.to_dict(), "channel_names": list(self.channel_names),
            "preprocessing": self.preprocessing.to_dict(), "mirror_axes": self.mirror_axes,
            "provenance": json.loads(json.dumps(self.provenance)), "warnings": list(self.warnings),
        }

    def build_network(self, fold: str | int | None = None) -> nn.Module:
        """The plans' network with ``fold``'s weights (default: the first fold), strictly loaded, in eval mode."""
        key = self.folds[0] if fold is None else fold_key(fold)
        if key not in self.state_dicts:
            raise FormatError(f"Fold {key} was not read (read: {', '.join(self.folds)}).")
        net = self.network.build()
        net.load_state_dict(restore_aliases(self.state_dicts[key], net.state_dict().keys()), strict=True)
        return net.eval()


# ------------------------------------------------------------------------------------------ reading


def read_nnunet_model(path: str | os.PathLike, folds: list[str | int] | None = None, checkpoint: str | None = None,
                      configuration: str | None = None, max_zip_bytes: int = MAX_IMPORT_BYTES) -> NnUNetModel:
    """Read and check an nnU-Net v2 model folder, dataset folder or zip (see the module doc)."""
    p = Path(path)
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if "/" in checkpoint or "\\" in checkpoint or not checkpoint.endswith(".pth") or checkpoint.startswith("."):
        raise FormatError(f"The checkpoint must be a file name like {DEFAULT_CHECKPOINT}, not {checkpoint!r}.")
    if p.is_dir():
        root = Path(pick_model([str(r) for r in folder_roots(p)], configuration, str(p)))
        return _read_folder(root, folds, checkpoint, source=p, display=str(root))
    if p.is_file() and zipfile.is_zipfile(p):
        return _read_zip(p, folds, checkpoint, configuration, max_zip_bytes)
    if not p.exists():
        raise FormatError(f"{p} does not exist.")
    raise FormatError(f"{p} is neither a folder nor a zip file.")


def _read_zip(p: Path, folds, checkpoint: str, configuration: str | None, max_bytes: int) -> NnUNetModel:
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise FormatError(f"{p} is not a readable zip file ({e}).") from e
    with zf:
        names = check_zip(zf, max_bytes, label=str(p))
        prefix = pick_model(zip_roots(names), configuration, str(p))
        files = [n for n in names if n.startswith(prefix) and not n.endswith("/")]
        present = folds_with(sorted({PurePosixPath(n[len(prefix):]).parts[0] for n in files
                                      if len(PurePosixPath(n[len(prefix):]).parts) > 1}),
                              lambda f: f"{prefix}{f}/{checkpoint}" in files)
        chosen, warnings = choose_folds(present, folds, checkpoint, f"{p}:{prefix or '/'}")
        wanted = [prefix + "dataset.json", prefix + "plans.json"] + [f"{prefix}fold_{f}/{checkpoint}" for f in chosen]
        with tempfile.TemporaryDirectory(prefix="unetseg-nnunet-") as tmp:
            hashes = extract_members(zf, wanted, Path(tmp), strip=prefix, max_bytes=max_bytes)
            model = _read_folder(Path(tmp), chosen, checkpoint, source=p, display=f"{p.name}:{prefix or '/'}",
                                 folder_name=PurePosixPath(prefix.rstrip("/")).name or p.stem,
                                 known_hashes={n[len(prefix):]: h for n, h in hashes.items()})
    model.warnings[:0] = warnings
    model.provenance["source_sha256"] = sha256_file(p)
    model.provenance["zip_prefix"] = prefix
    return model


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FormatError(f"{what} is missing.") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{what} is not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise FormatError(f"{what} must hold a JSON object.")
    return data


def _read_folder(root: Path, folds, checkpoint: str, source: Path, display: str, folder_name: str | None = None,
                 known_hashes: dict[str, str] | None = None) -> NnUNetModel:
    folder_name = folder_name or root.name
    hashes = dict(known_hashes or {})
    dataset_json = _read_json(root / "dataset.json", f"{display}/dataset.json")
    plans = _read_json(root / "plans.json", f"{display}/plans.json")
    for rel in ("dataset.json", "plans.json"):
        hashes.setdefault(rel, sha256_file(root / rel))
    warnings: list[str] = []
    if folds is None or known_hashes is None:
        present = folds_with(sorted(p.name for p in root.iterdir() if p.is_dir()),
                              lambda e: (root / e / checkpoint).is_file())
        folds, warnings = choose_folds(present, folds, checkpoint, display)

    channel_names = parse_channels(dataset_json)
    labels = parse_labels(dataset_json)
    m = MODEL_FOLDER_RE.match(folder_name)

    trainer = configuration = None
    mirror_axes: list[int] | None = None
    spec = preprocessing = expected = None
    state_dicts, epochs, dropped = {}, {}, 0
    for fold in folds:
        rel = f"fold_{fold}/{checkpoint}"
        what = f"{display}/{rel}"
        path = root / rel
        if rel not in hashes:
            hashes[rel] = sha256_file(path)
        ckpt = load_checkpoint(path, what)
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
            raise FormatError(f"{what} is not an nnU-Net checkpoint (no 'network_weights').")
        init_args = ckpt.get("init_args") if isinstance(ckpt.get("init_args"), dict) else {}
        t_name = ckpt.get("trainer_name")
        c_name = init_args.get("configuration") or (m["configuration"] if m else None)
        if not isinstance(t_name, str) or not isinstance(c_name, str):
            raise FormatError(f"{what} does not say which trainer and configuration made it.")
        axes = ckpt.get("inference_allowed_mirroring_axes")
        if axes is not None and (not isinstance(axes, (list, tuple)) or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in axes)):
            raise FormatError(f"{what}: inference_allowed_mirroring_axes must be a list of axes, got {axes!r}.")
        axes = None if axes is None else [int(a) for a in axes]
        if trainer is None:  # the first fold decides, as in nnU-Net's predictor
            trainer, configuration, mirror_axes = t_name, c_name, axes
            _check_trainer(trainer, display)
            if m and m["configuration"] != configuration:
                raise FormatError(f"{what} was trained for configuration {configuration!r}, but its folder is named "
                                  f"for {m['configuration']!r}; the folds or plans were mixed up.")
            if m and m["trainer"] != trainer:
                warnings.append(f"The checkpoints name trainer {trainer!r}, the folder {m['trainer']!r}; "
                                f"{trainer!r} is used, as nnU-Net does.")
            config = resolve_configuration(plans, configuration)
            check_not_cascade(config, configuration)
            preprocessing = parse_preprocessing(plans, configuration, config, len(channel_names))
            spec = network_spec(config, configuration, len(channel_names), labels.heads)
            if mirror_axes is not None and any(a < 0 or a >= preprocessing.spatial_dims for a in mirror_axes):
                raise FormatError(f"{what}: mirroring axes {mirror_axes} do not fit a "
                                  f"{preprocessing.spatial_dims}-D configuration.")
            expected = _expected_shapes(spec, display)
        else:
            if t_name != trainer or c_name != configuration:
                raise FormatError(f"{what} was made by {t_name} / {c_name}, the first fold by {trainer} / "
                                  f"{configuration}; folds of different models cannot be ensembled.")
            if axes != mirror_axes:
                warnings.append(f"fold_{fold} allows mirroring axes {axes}, the first fold {mirror_axes}; the first "
                                "fold's are used, as in nnU-Net.")
        ck_plans = init_args.get("plans")
        if isinstance(ck_plans, dict) and isinstance(ck_plans.get("configurations"), dict) \
                and configuration in ck_plans["configurations"]:
            try:
                ck_config = resolve_configuration(ck_plans, configuration)
            except FormatError:
                ck_config = None
            if ck_config is not None and not same_architecture(ck_config["architecture"],
                                                               resolve_configuration(plans,
                                                                                     configuration)["architecture"]):
                raise FormatError(f"{what} was trained with a different {configuration} network than plans.json "
                                  "describes (the plans were edited or belong to another model).")
        state = unwrap_prefixes(tensor_dict(ckpt["network_weights"], f"{what} network_weights"))
        problems = fit_problems(expected, state)
        if problems:
            raise FormatError(_mismatch_message(what, trainer, configuration, spec, problems))
        state, gone = drop_aliases(state)
        dropped += len(gone)
        state_dicts[fold] = state
        epochs[fold] = ckpt.get("current_epoch") if isinstance(ckpt.get("current_epoch"), int) else None
        del ckpt

    provenance = {
        "format": FORMAT_NAME,
        "source": str(source),
        "folder": folder_name,
        "dataset": plans.get("dataset_name") or dataset_json.get("name"),
        "trainer": trainer,
        "trainer_known": trainer in KNOWN_PLAN_TRAINERS,
        "plans": plans.get("plans_name") or (m["plans"] if m else None),
        "configuration": configuration,
        "folds": list(folds),
        "checkpoint": checkpoint,
        "epochs": epochs,
        "files_sha256": dict(sorted(hashes.items())),
        "aliased_tensors_dropped": dropped,
    }
    if trainer not in KNOWN_PLAN_TRAINERS:
        warnings.append(f"Trainer {trainer!r} is not one of nnunetv2's; its weights fit the network the plans "
                        "describe exactly, so that network is used. If the trainer changes the network in ways "
                        "that leave no trace in the weights (e.g. another activation), the results will differ.")
    return NnUNetModel(
        folder_name=folder_name, dataset_name=str(provenance["dataset"]), trainer=trainer,
        plans_name=str(provenance["plans"]), configuration=configuration, folds=list(folds), checkpoint=checkpoint,
        network=spec, state_dicts=state_dicts, labels=labels, channel_names=channel_names,
        preprocessing=preprocessing, mirror_axes=mirror_axes, provenance=provenance, dataset_json=dataset_json,
        plans=plans, warnings=warnings,
    )


def _check_trainer(trainer: str, where: str) -> None:
    if OTHER_NETWORK_TRAINERS.match(trainer):
        raise FormatError(f"{where} was trained with {trainer}, whose network is not the one plans.json describes "
                          "(it overrides build_network_architecture); it cannot be rebuilt from the plans.")


def _expected_shapes(spec: NetworkSpec, where: str) -> dict[str, tuple]:
    """Parameter/buffer shapes of the plans' network, built on the meta device (no memory, no init)."""
    import torch

    try:
        with torch.device("meta"):
            net = spec.build()
    except FormatError:
        raise
    except Exception as e:  # a plans file whose arguments the class rejects
        raise FormatError(f"{where}: the network in plans.json cannot be built ({type(e).__name__}: {e}).") from e
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _mismatch_message(what: str, trainer: str, configuration: str, spec: NetworkSpec, problems: list[str]) -> str:
    head = (f"{what} does not fit the {spec.class_name} that plans.json describes for {configuration}: "
            + "; ".join(problems) + ".")
    if trainer not in KNOWN_PLAN_TRAINERS:
        return head + (f" The custom trainer {trainer!r} probably builds its own network, which cannot be rebuilt "
                       "from the plans; it is not supported.")
    return head + " The checkpoint and plans.json come from different models (or the plans were edited)."


def model_summary(model: NnUNetModel) -> dict[str, Any]:
    """A short, readable summary (for logs and the CLI)."""
    return {
        "model": f"{model.dataset_name} / {model.folder_name}",
        "network": f"{model.network.class_name} ({model.network.spatial_dims}-D, "
                   f"{model.network.kwargs.get('n_stages')} stages)",
        "channels": model.channel_names,
        "labels": {str(k): v for k, v in model.labels.label_names.items()},
        "regions": model.labels.has_regions,
        "folds": model.folds,
        "mirror_axes": model.mirror_axes,
        "patch_size": model.preprocessing.patch_size,
        "spacing": model.preprocessing.spacing,
    }
