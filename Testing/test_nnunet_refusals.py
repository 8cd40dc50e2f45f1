"""nnU-Net models that cannot be reproduced faithfully are refused with a reason (unetseg.models.formats.nnunet).

Cascades, trainers with their own network, weights that do not fit the plans, folds of different models, networks
and classes outside the allow-lists, preprocessing outside what is reproduced, and label rules.
"""

from __future__ import annotations

import json

import pytest
import torch
from nnunet_fakes import arch, configuration, network_for, nnunet_checkpoint, plans_for, same_output, write_model

from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import load_checkpoint
from unetseg.models.formats.nnunet import read_nnunet_model
from unetseg.models.formats.nnunet_plans import parse_labels


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

