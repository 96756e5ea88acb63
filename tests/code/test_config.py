"""The params schema: read once, profiles overlay, bad keys named."""

from __future__ import annotations

import shutil

import pytest
import yaml

from radclip.config import Params, ParamsError, load_params, parse_params


def test_default_params_file_is_valid(project_root):
    params = load_params(project_root / "params.yaml")
    assert params.profile == "default"
    assert params.phantoms.enabled and params.data.collections


def test_params_are_read_once_and_shared(project_root):
    assert load_params(project_root / "params.yaml") is load_params(project_root / "params.yaml")


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ParamsError, match=r"unknown key 'curate.image_sise'"):
        parse_params({"curate": {"image_sise": 64}})


def test_ill_typed_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ParamsError, match=r"key 'phantoms.train_2d'"):
        parse_params({"phantoms": {"train_2d": "many"}})


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ParamsError, match="sum to 1"):
        parse_params({"curate": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}})


def test_paper_profile_overlays_the_default(tmp_path, project_root):
    shutil.copytree(project_root / "params", tmp_path / "params")
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["profile"] = "paper"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    paper = load_params(tmp_path / "params.yaml")
    default = load_params(project_root / "params.yaml")
    assert paper.curate.image_size == 224 and default.curate.image_size == 64
    assert not paper.phantoms.enabled
    assert {c.format for c in paper.data.collections} == {"csv", "chexpert", "image_folders", "ixi", "covid_ct_md", "chestxray14",
                                                        "cxr_lt"}
    assert paper.model.init_seed == default.model.init_seed  # keys the overlay does not name stay
    assert paper.digest() != default.digest()


def test_profile_without_overlay_file_fails_clearly(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: nonexistent\n")
    with pytest.raises(ParamsError, match="no overlay file"):
        load_params(tmp_path / "params.yaml")


def test_cli_profile_option_selects_overlay(project_root):
    params = load_params(project_root / "params.yaml", profile="paper")
    assert params.profile == "paper" and params.curate.image_size == 224


def test_duplicate_collection_names_are_rejected():
    collection = {"name": "a", "format": "csv", "path": "x"}
    with pytest.raises(ParamsError, match="unique"):
        parse_params({"data": {"collections": [collection, collection]}})


def test_caption_template_must_name_the_condition():
    with pytest.raises(ParamsError, match="condition"):
        parse_params({"data": {"caption": {"template": "{region} {modality}"}}})


def test_params_model_is_immutable():
    with pytest.raises(Exception):
        Params().profile = "other"  # type: ignore[misc]


def test_section_digest_changes_only_with_its_sections(project_root):
    default = load_params(project_root / "params.yaml")
    other_lr = default.model_copy(update={"train_adapter": default.train_adapter.model_copy(update={"lr": 0.5})})
    other_rule = default.model_copy(update={"validate_": default.validate_.model_copy(update={"min_class_count": 99})})
    sections = ("validate", "curate.volume")
    assert other_lr.digest() != default.digest()
    assert other_lr.digest(*sections) == default.digest(*sections)  # a stage that does not read train_adapter
    assert other_rule.digest(*sections) != default.digest(*sections)
    with pytest.raises(KeyError, match="curate.nope"):
        default.digest("curate.nope")


def test_with_values_replaces_dotted_keys_and_validates():
    params = Params()
    changed = params.with_values({"train_adapter.loop_seed": 7, "model.adapter.reducer": "mhsa_mean"})
    assert changed.train_adapter.loop_seed == 7 and changed.model.adapter.reducer == "mhsa_mean"
    assert params.train_adapter.loop_seed == 0  # the original is untouched
    with pytest.raises(KeyError, match="train_adapter.no_such_key"):
        params.with_values({"train_adapter.no_such_key": 1})
    with pytest.raises(ValueError):
        params.with_values({"model.adapter.reducer": "median"})
