"""Reading nnU-Net v2 trained-model folders and zips (unetseg.models.formats.nnunet), without nnunetv2.

The fixtures are made here: a tiny ``PlainConvUNet`` / ``ResidualEncoderUNet`` of dynamic-network-architectures (the
package nnU-Net builds its networks with) and ``torch.save`` of a dict shaped like nnU-Net's ``checkpoint_final.pth``
(optimizer state, training logs holding numpy scalars, ``init_args`` with the plans and a ``torch.device``, the
trainer's name and the mirroring axes), next to a ``dataset.json`` and ``plans.json`` as nnU-Net writes them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "dynamic_network_architectures",
    reason="dynamic-network-architectures is not installed (pip install --no-deps dynamic-network-architectures)",
)

from unetseg.models import archive
from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import allowed_global_names, drop_aliases, load_checkpoint
from unetseg.models.formats.nnunet import looks_like_nnunet, read_nnunet_model
from unetseg.models.formats.nnunet_network import NetworkSpec
from unetseg.models.formats.nnunet_plans import parse_labels, resolve_configuration

# ------------------------------------------------------------------------------------------ fixture builders

CT_PROPS = {"0": {"max": 1200.0, "mean": 80.5, "median": 70.0, "min": -100.0, "percentile_00_5": -50.0,
                  "percentile_99_5": 900.0, "std": 120.25}}


def arch(cls: str = "PlainConvUNet", dims: int = 3, features=(4, 8, 16)) -> dict:
    n = len(features)
    kwargs = {
        "n_stages": n, "features_per_stage": list(features),
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [[3] * dims] * n, "strides": [[1] * dims] + [[2] * dims] * (n - 1),
        ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): [1] * n,
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}", "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def configuration(dims: int = 3, cls: str = "PlainConvUNet", n_channels: int = 1, **over) -> dict:
    cfg = {
        "data_identifier": "nnUNetPlans_x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16] * dims, "median_image_size_in_voxels": [20.0] * dims,
        "spacing": [2.5, 0.8, 0.8][-dims:], "normalization_schemes": ["CTNormalization"] * n_channels,
        "use_mask_for_norm": [False] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch(cls, dims), "batch_dice": False,
    }
    cfg.update(over)
    return cfg


def plans_for(configs: dict, n_channels: int = 1) -> dict:
    props = {str(c): CT_PROPS["0"] for c in range(n_channels)}
    return {"dataset_name": "Dataset042_Test", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [2.5, 0.8, 0.8], "original_median_shape_after_transp": [20, 20, 20],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0],
            "configurations": configs, "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": props}


def dataset_for(labels=None, channels=None, regions_class_order=None) -> dict:
    d = {"channel_names": channels or {"0": "CT"}, "labels": labels or {"background": 0, "liver": 1, "tumor": 2},
         "numTraining": 10, "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        d["regions_class_order"] = regions_class_order
    return d


def network_for(plans: dict, dataset: dict, config_name: str, seed: int, arch_override: dict | None = None):
    """The network nnU-Net would build for these plans (deep supervision on, as during training)."""
    cfg = resolve_configuration(plans, config_name)
    a = arch_override or cfg["architecture"]
    labels = parse_labels(dataset)
    spec_kwargs = copy.deepcopy(a["arch_kwargs"])
    cls_name = a["network_class_name"].rsplit(".", 1)[1]
    spec = NetworkSpec(cls_name, {**spec_kwargs, "input_channels": len(dataset["channel_names"]),
                                  "num_classes": labels.heads, "deep_supervision": True})
    torch.manual_seed(seed)
    return spec.build()


def nnunet_checkpoint(net, plans: dict, dataset: dict, config_name: str, fold, trainer: str = "nnUNetTrainer",
                      mirror=(0, 1, 2)) -> dict:
    params = list(net.parameters())
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params[:3])},
                            "param_groups": [{"lr": 0.001, "momentum": 0.99, "dampening": 0, "weight_decay": 3e-05,
                                              "nesterov": True, "params": list(range(len(params)))}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float32(0.51), np.float32(0.62)], "ema_fg_dice": [np.float64(0.5)] * 2,
                    "dice_per_class_or_region": [[np.float32(0.4), np.float32(0.6)]] * 2,
                    "train_losses": [np.float32(-0.3)] * 2, "val_losses": [np.float32(-0.2)] * 2,
                    "lrs": [0.01, 0.005], "epoch_start_timestamps": [1.0, 2.0], "epoch_end_timestamps": [1.5, 2.5]},
        "_best_ema": np.float64(0.55),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": config_name, "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": None if mirror is None else tuple(mirror),
    }


def write_model(parent: Path, *, config_name: str = "3d_fullres", dims: int = 3, cls: str = "PlainConvUNet",
                folds=(0, 1), trainer: str = "nnUNetTrainer", dataset: dict | None = None, plans: dict | None = None,
                checkpoint: str = "checkpoint_final.pth", mirror=(0, 1, 2), folder_trainer: str | None = None,
                ) -> tuple[Path, dict]:
    """An nnU-Net results folder ``parent/<trainer>__nnUNetPlans__<config>/``; returns it and the fold networks."""
    dataset = dataset or dataset_for()
    n_channels = len(dataset["channel_names"])
    plans = plans or plans_for({config_name: configuration(dims, cls, n_channels)}, n_channels)
    folder = parent / f"{folder_trainer or trainer}__nnUNetPlans__{config_name}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset_fingerprint.json").write_text("{}")
    nets = {}
    for i, fold in enumerate(folds):
        net = network_for(plans, dataset, config_name, seed=100 + i)
        (folder / f"fold_{fold}").mkdir()
        torch.save(nnunet_checkpoint(net, plans, dataset, config_name, fold, trainer, mirror),
                   folder / f"fold_{fold}" / checkpoint)
        (folder / f"fold_{fold}" / "debug.json").write_text("{}")
        nets[str(fold)] = net.eval()
    return folder, nets


def zip_folder(folder: Path, zip_path: Path, base: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(base).as_posix())
    return zip_path


def snapshot(path: Path) -> dict:
    if path.is_file():
        st = path.stat()
        return {path.name: (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def same_output(net_a, net_b, shape) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        a, b = net_a(x), net_b(x)
    a = a[0] if isinstance(a, (list, tuple)) else a
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ reading


def test_reads_a_trained_model_folder(tmp_path):
    folder, nets = write_model(tmp_path)
    before = snapshot(folder)
    model = read_nnunet_model(folder)
    assert snapshot(folder) == before

    assert (model.trainer, model.plans_name, model.configuration) == ("nnUNetTrainer", "nnUNetPlans", "3d_fullres")
    assert model.folds == ["0", "1"] and model.checkpoint == "checkpoint_final.pth"
    assert model.network.class_name == "PlainConvUNet" and model.network.spatial_dims == 3
    assert model.network.kwargs["conv_op"] == "torch.nn.Conv3d"
    assert model.network.kwargs["nonlin"] == "torch.nn.LeakyReLU"
    assert model.network.kwargs["input_channels"] == 1 and model.network.kwargs["num_classes"] == 3
    assert model.network.kwargs["deep_supervision"] is False
    assert model.channel_names == ["CT"]
    assert model.labels.label_names == {0: "background", 1: "liver", 2: "tumor"} and not model.labels.has_regions
    assert model.mirror_axes == [0, 1, 2]
    pre = model.preprocessing
    assert pre.transpose_forward == [2, 0, 1] and pre.transpose_backward == [1, 2, 0]
    assert pre.spacing == [2.5, 0.8, 0.8] and pre.patch_size == [16, 16, 16] and pre.spatial_dims == 3
    assert pre.normalization_schemes == ["CTNormalization"] and pre.use_mask_for_norm == [False]
    assert pre.intensity_properties[0]["percentile_99_5"] == 900.0
    assert pre.resampling_data == {"fn": "resample_data_or_seg_to_shape",
                                   "kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}}
    assert pre.resampling_probabilities["kwargs"]["order"] == 1

    # the decoder's copies of the encoder tensors are stored once, and restored when the network is built
    raw = nets["0"].state_dict()
    assert any(k.startswith("decoder.encoder.") for k in raw)
    for state in model.state_dicts.values():
        assert not any(k.startswith("decoder.encoder.") for k in state)
        assert len(state) < len(raw)
    assert model.provenance["aliased_tensors_dropped"] == 2 * sum(k.startswith("decoder.encoder.") for k in raw)
    for fold, net in nets.items():
        same_output(net, model.build_network(fold), (1, 1, 16, 16, 16))

    # provenance: the original files' hashes
    files = model.provenance["files_sha256"]
    assert files["fold_1/checkpoint_final.pth"] == hashlib.sha256(
        (folder / "fold_1" / "checkpoint_final.pth").read_bytes()).hexdigest()
    assert set(files) == {"dataset.json", "plans.json", "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth"}
    assert model.provenance["epochs"] == {"0": 2, "1": 2} and model.provenance["trainer_known"]
    described = json.loads(json.dumps(model.describe()))
    assert NetworkSpec.from_dict(described["network"]) == model.network


def test_plain_weights_only_refuses_a_checkpoint_and_the_allow_list_opens_it(tmp_path):
    folder, _ = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["logging"]["mean_fg_dice"][0], np.float32)
    assert isinstance(ckpt["_best_ema"], np.float64)
    assert ckpt["init_args"]["device"] == torch.device("cpu")
    names = allowed_global_names()
    assert {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype"} <= names
    assert all(n.startswith("numpy.") for n in names)


def _rewrite_pickle(path: Path, old: bytes, new: bytes) -> None:
    """Replace text inside a zip-format checkpoint's data.pkl (protocol-2 GLOBAL names are newline-terminated)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zf.writestr(info.filename, data)


def test_numpy_1_checkpoint_names_load(tmp_path):
    folder, nets = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    _rewrite_pickle(path, b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    model = read_nnunet_model(folder)
    same_output(nets["0"], model.build_network(), (1, 1, 16, 16, 16))


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickle_is_refused_without_running_it(tmp_path, legacy):
    folder, _ = write_model(tmp_path, folds=(0,))
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(path)
    ckpt["logging"]["payload"] = Boom()
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FormatError, match=r"Refusing .*checkpoint_final.pth.*(posix|os)\.system"):
        read_nnunet_model(folder)
    assert not marker.exists()


def test_two_dimensional_residual_encoder_with_regions(tmp_path):
    dataset = dataset_for(labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
                          channels={"0": "T1", "1": "T2"}, regions_class_order=[1, 2, 3])
    folder, nets = write_model(tmp_path, config_name="2d", dims=2, cls="ResidualEncoderUNet", folds=("all",),
                               dataset=dataset, mirror=(0, 1),
                               plans=plans_for({"2d": configuration(2, "ResidualEncoderUNet", 2,
                                                                    normalization_schemes=["ZScoreNormalization"] * 2,
                                                                    use_mask_for_norm=[True, True])}, 2))
    model = read_nnunet_model(folder)
    assert model.folds == ["all"] and model.mirror_axes == [0, 1]
    assert model.network.class_name == "ResidualEncoderUNet" and model.network.spatial_dims == 2
    assert model.network.kwargs["input_channels"] == 2 and model.network.kwargs["num_classes"] == 3
    labels = model.labels
    assert labels.has_regions and labels.heads == 3
    assert labels.regions == [[1, 2, 3], [2, 3], [3]] and labels.regions_class_order == [1, 2, 3]
    assert labels.label_names == {0: "background", 1: "whole", 2: "core", 3: "enhancing"}
    assert model.preprocessing.use_mask_for_norm == [True, True] and model.channel_names == ["T1", "T2"]
    assert model.preprocessing.spacing == [0.8, 0.8]
    same_output(nets["all"], model.build_network("all"), (1, 2, 16, 16))


def test_no_mirroring_trainer_and_old_format_plans(tmp_path):
    cfg = configuration()
    old = {k: v for k, v in cfg.items() if k != "architecture"}
    old.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=16,
               n_conv_per_stage_encoder=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
               conv_kernel_sizes=[[3, 3, 3]] * 3, pool_op_kernel_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
               num_pool_per_axis=[2, 2, 2])
    folder, nets = write_model(tmp_path, plans=plans_for({"3d_fullres": old}), folds=(0,),
                               trainer="nnUNetTrainer_4000epochs_NoMirroring", mirror=None)
    model = read_nnunet_model(folder)
    assert model.mirror_axes is None and model.trainer == "nnUNetTrainer_4000epochs_NoMirroring"
    assert model.network.kwargs["features_per_stage"] == [4, 8, 16]
    same_output(nets["0"], model.build_network(), (1, 1, 16, 16, 16))


def test_inherited_configuration_is_resolved(tmp_path):
    base = configuration()
    plans = plans_for({"3d_fullres": base, "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4,
                                                             "patch_size": [32, 32, 32]}})
    folder, _ = write_model(tmp_path, config_name="3d_fullres_bs4", plans=plans, folds=(0,))
    model = read_nnunet_model(folder)
    assert model.preprocessing.patch_size == [32, 32, 32] and model.preprocessing.batch_size == 4
    assert model.network.kwargs["features_per_stage"] == [4, 8, 16]
    circular = plans_for({"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}})
    with pytest.raises(FormatError, match=r"circle"):
        resolve_configuration(circular, "a")


# ------------------------------------------------------------------------------------------ layouts


def test_dataset_folder_and_zips_with_and_without_the_dataset_level(tmp_path):
    ds = tmp_path / "results" / "Dataset042_Test"
    write_model(ds, config_name="3d_fullres", folds=(0, 1))
    folder2d, nets2d = write_model(ds, config_name="2d", dims=2, folds=(0,), mirror=(0, 1))
    assert looks_like_nnunet(ds) and looks_like_nnunet(folder2d)
    (tmp_path / "empty").mkdir()
    assert not looks_like_nnunet(tmp_path / "empty") and not looks_like_nnunet(folder2d / "plans.json")

    with pytest.raises(FormatError, match=r"several nnU-Net models.*2d.*3d_fullres|several nnU-Net models.*3d_fullres"):
        read_nnunet_model(ds)
    assert read_nnunet_model(ds, configuration="2d").configuration == "2d"
    assert read_nnunet_model(ds, configuration="nnUNetTrainer__nnUNetPlans__3d_fullres").folds == ["0", "1"]
    with pytest.raises(FormatError, match=r"no model folder matches '3d_lowres'"):
        read_nnunet_model(ds, configuration="3d_lowres")

    # as nnUNetv2_export_model_to_zip writes it: the Dataset level included
    z1 = zip_folder(ds, tmp_path / "export.zip", ds.parent)
    before = snapshot(z1)
    assert looks_like_nnunet(z1)
    m1 = read_nnunet_model(z1, configuration="2d")
    assert snapshot(z1) == before
    assert m1.folder_name == "nnUNetTrainer__nnUNetPlans__2d" and m1.folds == ["0"]
    assert m1.provenance["source_sha256"] == hashlib.sha256(z1.read_bytes()).hexdigest()
    assert m1.provenance["zip_prefix"] == "Dataset042_Test/nnUNetTrainer__nnUNetPlans__2d/"
    assert m1.provenance["files_sha256"]["fold_0/checkpoint_final.pth"] == hashlib.sha256(
        (folder2d / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest()
    same_output(nets2d["0"], m1.build_network(), (1, 1, 16, 16))

    # the model folder zipped on its own, and its contents zipped without any folder
    z2 = zip_folder(folder2d, tmp_path / "model.zip", folder2d.parent)
    assert read_nnunet_model(z2).configuration == "2d"
    z3 = zip_folder(folder2d, tmp_path / "flat.zip", folder2d)
    m3 = read_nnunet_model(z3, folds=[0])
    assert m3.configuration == "2d" and m3.provenance["zip_prefix"] == ""


def test_fold_and_checkpoint_selection(tmp_path):
    folder, _ = write_model(tmp_path, folds=(0, 1, "all"))
    assert read_nnunet_model(folder).folds == ["0", "1", "all"]  # fold_all included by default
    assert read_nnunet_model(folder, folds=["all"]).folds == ["all"]
    assert read_nnunet_model(folder, folds=["fold_1", 0]).folds == ["1", "0"]
    with pytest.raises(FormatError, match=r"fold 3 was asked for but there is no fold_3"):
        read_nnunet_model(folder, folds=[3])
    with pytest.raises(FormatError, match=r"Folds are numbers or 'all'"):
        read_nnunet_model(folder, folds=["best"])

    (folder / "fold_2").mkdir()  # an unfinished fold: no checkpoint_final.pth
    (folder / "fold_2" / "checkpoint_latest.pth").write_bytes(b"")
    model = read_nnunet_model(folder)
    assert model.folds == ["0", "1", "all"] and any("fold_2 has no checkpoint_final.pth" in w for w in model.warnings)
    with pytest.raises(FormatError, match=r"fold_2 has no checkpoint_final.pth"):
        read_nnunet_model(folder, folds=[2])

    best, _ = write_model(tmp_path / "best", folds=(0,), checkpoint="checkpoint_best.pth")
    with pytest.raises(FormatError, match=r"no fold has checkpoint_final.pth.*checkpoint_best.pth"):
        read_nnunet_model(best)
    assert read_nnunet_model(best, checkpoint="checkpoint_best.pth").checkpoint == "checkpoint_best.pth"
    with pytest.raises(FormatError, match=r"must be a file name"):
        read_nnunet_model(best, checkpoint="../fold_0/checkpoint_best.pth")


# ------------------------------------------------------------------------------------------ refusals


def test_cascade_is_refused(tmp_path):
    plans = plans_for({"3d_lowres": configuration(), "3d_cascade_fullres": {
        "inherits_from": "3d_lowres", "previous_stage": "3d_lowres"}})
    folder, _ = write_model(tmp_path, config_name="3d_cascade_fullres", plans=plans, folds=(0,))
    with pytest.raises(FormatError, match=r"'3d_cascade_fullres' is a cascade stage.*'3d_lowres'"):
        read_nnunet_model(folder)


@pytest.mark.parametrize("trainer", ["nnUNetTrainerBN", "nnUNet_Primus_M_Trainer"])
def test_trainers_with_their_own_network_are_refused(tmp_path, trainer):
    folder, _ = write_model(tmp_path, trainer=trainer, folds=(0,))
    with pytest.raises(FormatError, match=f"trained with {trainer}.*overrides build_network_architecture"):
        read_nnunet_model(folder)


def test_custom_trainer_is_accepted_only_when_its_weights_fit_the_plans(tmp_path):
    folder, nets = write_model(tmp_path / "a", trainer="MyTrainer", folds=(0,))
    model = read_nnunet_model(folder)
    assert not model.provenance["trainer_known"] and any("'MyTrainer' is not one of nnunetv2's" in w
                                                         for w in model.warnings)
    same_output(nets["0"], model.build_network(), (1, 1, 16, 16, 16))

    # a custom trainer that built a wider network than the plans say
    folder, _ = write_model(tmp_path / "b", trainer="MyWideTrainer", folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    wide = network_for(plans, dataset, "3d_fullres", 1, arch_override=arch(features=(8, 16, 32)))
    torch.save(nnunet_checkpoint(wide, plans, dataset, "3d_fullres", 0, "MyWideTrainer"),
               folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"does not fit the PlainConvUNet.*shape mismatches.*custom trainer "
                                          "'MyWideTrainer'"):
        read_nnunet_model(folder)


def test_plans_checkpoint_mismatch_is_refused(tmp_path):
    folder, _ = write_model(tmp_path, folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(FormatError, match=r"trained with a different 3d_fullres network than plans.json"):
        read_nnunet_model(folder)

    # plans without a trace in the checkpoint's init_args: the weights themselves do not fit
    ckpt = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    del ckpt["init_args"]["plans"]
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"does not fit the PlainConvUNet.*come from different models"):
        read_nnunet_model(folder)


def test_folds_of_different_models_and_configuration_names_are_refused(tmp_path):
    folder, _ = write_model(tmp_path, folds=(0, 1))
    ckpt = load_checkpoint(folder / "fold_1" / "checkpoint_final.pth")
    ckpt["trainer_name"] = "nnUNetTrainerDA5"
    torch.save(ckpt, folder / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"folds of different models cannot be ensembled"):
        read_nnunet_model(folder)
    ckpt["trainer_name"] = "nnUNetTrainer"
    ckpt["init_args"]["configuration"] = "2d"
    for f in (0, 1):
        torch.save(ckpt, folder / f"fold_{f}" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"trained for configuration '2d', but its folder is named for '3d_fullres'"):
        read_nnunet_model(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(network_class_name="my_package.nets.FancyUNet"),
     "uses the network 'my_package.nets.FancyUNet'"),
    (lambda a: a.update(network_class_name="my_package.PlainConvUNet"), "uses the network 'my_package.PlainConvUNet'"),
    (lambda a: a["arch_kwargs"].update(nonlin="os.system"), r"arch_kwargs\['nonlin'\] = 'os.system' is not one of"),
    (lambda a: a["arch_kwargs"].update(conv_op="evil.Conv3d"), r"arch_kwargs\['conv_op'\] = 'evil.Conv3d'"),
    (lambda a: a["_kw_requires_import"].append("n_stages"), r"asks to import arch_kwargs\['n_stages'\]"),
    (lambda a: a["arch_kwargs"].update(surprise=1), r"does not take arch_kwargs \['surprise'\]"),
])
def test_networks_and_classes_outside_the_allow_lists_are_refused(tmp_path, edit, message):
    folder, _ = write_model(tmp_path, folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans["configurations"]["3d_fullres"]["architecture"])
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(FormatError, match=message):
        read_nnunet_model(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["MyNormalization"]),
     "normalisation 'MyNormalization'"),
    (lambda p: p["configurations"]["3d_fullres"].update(preprocessor_name="MyPreprocessor"),
     "custom preprocessor 'MyPreprocessor'"),
    (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="my_resampling"), "with 'my_resampling'"),
    (lambda p: p.update(transpose_backward=[0, 1, 2]), "not a permutation of 3 axes and its inverse"),
    (lambda p: p.update(foreground_intensity_properties_per_channel={}), "needs foreground_intensity_properties"),
])
def test_preprocessing_outside_what_is_reproduced_is_refused(tmp_path, edit, message):
    folder, _ = write_model(tmp_path, folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))
    ckpt = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    ckpt["init_args"]["plans"] = plans
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=message):
        read_nnunet_model(folder)


def test_label_rules(tmp_path):
    with pytest.raises(FormatError, match=r"consecutive from 0"):
        parse_labels({"labels": {"background": 0, "a": 1, "b": 3}})
    with pytest.raises(FormatError, match=r"'background' must be 0"):
        parse_labels({"labels": {"background": 1, "a": 2}})
    with pytest.raises(FormatError, match=r"needs a 'regions_class_order'"):
        parse_labels({"labels": {"background": 0, "whole": [1, 2], "core": 2}})
    ignore = parse_labels({"labels": {"background": 0, "a": 1, "ignore": 2}})
    assert ignore.heads == 2 and ignore.ignore_label == 2 and ignore.label_names == {0: "background", 1: "a"}


def test_corrupt_alias_and_wrapped_state_dicts(tmp_path):
    folder, nets = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(path)
    ckpt["network_weights"] = {"module." + k: v for k, v in ckpt["network_weights"].items()}  # saved from DDP
    torch.save(ckpt, path)
    same_output(nets["0"], read_nnunet_model(folder).build_network(), (1, 1, 16, 16, 16))

    state = dict(nets["0"].state_dict())
    key = next(k for k in state if k.startswith("decoder.encoder."))
    state[key] = state[key].clone() + 1
    with pytest.raises(FormatError, match=r"different tensors under decoder.encoder"):
        drop_aliases(state)


def test_not_a_model_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FormatError, match=r"is not an nnU-Net v2 model"):
        read_nnunet_model(tmp_path)
    with pytest.raises(FormatError, match=r"does not exist"):
        read_nnunet_model(tmp_path / "nope")
    folder, _ = write_model(tmp_path / "m", folds=(0,))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match=r"not a readable PyTorch checkpoint"):
        read_nnunet_model(folder)
    torch.save({"state_dict": {}}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"not an nnU-Net checkpoint"):
        read_nnunet_model(folder)


# ------------------------------------------------------------------------------------------ hostile zips


def _model_zip_with(tmp_path: Path, extra) -> Path:
    folder, _ = write_model(tmp_path / "src", folds=(0,))
    z = zip_folder(folder, tmp_path / "m.zip", folder.parent)
    with zipfile.ZipFile(z, "a") as zf:
        extra(zf)
    return z


def _symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


@pytest.mark.parametrize("extra, message", [
    (lambda zf: zf.writestr("../evil.txt", "x"), r"escapes the target folder"),
    (lambda zf: zf.writestr("nnUNetTrainer__nnUNetPlans__3d_fullres/../../evil.txt", "x"),
     r"escapes the target folder"),
    (lambda zf: zf.writestr("/tmp/evil.txt", "x"), "absolute path"),
    (lambda zf: zf.writestr("C:/evil.txt", "x"), "absolute path"),
    (_symlink, "symbolic link"),
])
def test_unsafe_zips_are_refused(tmp_path, extra, message):
    z = _model_zip_with(tmp_path, extra)
    before = snapshot(z)
    with pytest.raises(FormatError, match=message):
        read_nnunet_model(z)
    assert snapshot(z) == before
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bombs_are_refused(tmp_path, monkeypatch):
    zeros = b"\0" * (8 << 20)
    z = _model_zip_with(tmp_path, lambda zf: zf.writestr("nnUNetTrainer__nnUNetPlans__3d_fullres/pad.bin", zeros,
                                                          compress_type=zipfile.ZIP_DEFLATED, compresslevel=9))
    monkeypatch.setattr(archive, "MAX_RATIO", 10**6)
    with pytest.raises(FormatError, match=r"unpacks to .* above the .* cap"):
        read_nnunet_model(z, max_zip_bytes=4 << 20)
    monkeypatch.setattr(archive, "MAX_RATIO", 100)
    with pytest.raises(FormatError, match=r"pad.bin: inflates \d+ times \(a zip bomb\)"):
        read_nnunet_model(z)


def test_a_member_larger_than_its_header_says_is_stopped(tmp_path):
    folder, _ = write_model(tmp_path / "src", folds=(0,))
    z = zip_folder(folder, tmp_path / "m.zip", folder.parent)
    data = bytearray(z.read_bytes())
    # shrink the declared size of plans.json in its central-directory entry (a lying header)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("plans.json"))
    name = info.filename.encode()
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0
        n = int.from_bytes(data[pos + 28:pos + 30], "little")
        if bytes(data[pos + 46:pos + 46 + n]) == name:
            break
        pos += 4
    data[pos + 24:pos + 28] = (10).to_bytes(4, "little")  # uncompressed size: 10 bytes
    z.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"plans.json"):
        read_nnunet_model(z)
