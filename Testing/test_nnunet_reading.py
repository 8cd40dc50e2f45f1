"""Reading nnU-Net v2 trained-model folders and zips (unetseg.models.formats.nnunet), without nnunetv2.

What is read from a results folder (network, labels, preprocessing, provenance), 2D/regions/old-format/inherited
plans, the folder and zip layouts nnU-Net writes, and fold and checkpoint selection. The fake models are built by
nnunet_fakes.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from nnunet_fakes import configuration, dataset_for, plans_for, same_output, snapshot, write_model, zip_folder

from unetseg.models.formats import FormatError
from unetseg.models.formats.nnunet import read_nnunet_model
from unetseg.models.formats.nnunet_layout import looks_like_nnunet
from unetseg.models.formats.nnunet_network import NetworkSpec
from unetseg.models.formats.nnunet_plans import resolve_configuration

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
