"""Bad budgets and wrong types stop before anything is written, naming the key, file and type."""

import pytest
import yaml

from detrdistill.cli import main
from detrdistill.config import ConfigError, config_to_dict, load_config
from tests.conftest import make_tiny_run_config


def _yaml(tmp_path, section=None, key=None, value=None):
    values = config_to_dict(make_tiny_run_config("conditional_detr", steps=2))
    if section:
        values[section][key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "steps", -5, "train.steps must be a whole number >= 1"),
    ("train", "steps", 0, "train.steps must be a whole number >= 1"),
    ("train", "steps", 10.5, "train.steps must be int | None, got float 10.5"),
    ("train", "steps", "ten", "train.steps must be int | None, got str 'ten'"),
    ("train", "steps", "10", "train.steps must be int | None, got str '10'"),
    ("train", "minutes", -1, "train.minutes must be > 0"),
    ("train", "lr", "fast", "train.lr must be float, got str 'fast'"),
    ("data", "batch_size", -8, "data.batch_size must be >= 1"),
    ("data", "invalid_boxes", "rejekt", "data.invalid_boxes 'rejekt' is not one of"),
    ("model", "family", "yolo", "model.family 'yolo' is not one of"),
])
def test_a_bad_yaml_value_names_key_and_file_before_anything_is_written(tmp_path, shapes_dir, capsys, section, key,
                                                                         value, message):
    path = _yaml(tmp_path, section, key, value)
    out = tmp_path / "out"
    code = main(["train", "--config", str(path), "--data", str(shapes_dir), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and message in error and str(path) in error
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--steps", "-5"], "train.steps must be a whole number >= 1"),
    (["--steps", "0"], "train.steps must be a whole number >= 1"),
    (["--minutes", "-1"], "train.minutes must be > 0"),
    (["--set", "train.steps=ten"], "train.steps must be int | None"),
])
def test_a_bad_budget_flag_is_refused(tmp_path, shapes_dir, capsys, flags, message):
    out = tmp_path / "out"
    code = main(["train", "--config", str(_yaml(tmp_path)), "--data", str(shapes_dir), "--out", str(out), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_nested_field_and_non_mapping_section_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['train.stpes'\] in train"):
        load_config(path)
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(path)
    path.write_text("train:\n  steps: null\n")
    with pytest.raises(ConfigError, match="give a budget"):
        load_config(path)


def test_base_starts_from_a_preset_and_overrides_only_what_the_yaml_gives(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: deformable_student\ntrain:\n  steps: 123\nmodel:\n  backbone:\n    depths: [2, 2, 2, 2]\n")
    config, preset = load_config(path), load_config("deformable_student")
    assert config.train.steps == 123 and config.model.backbone.depths == [2, 2, 2, 2]
    assert config.train.lr == preset.train.lr and config.model.d_model == preset.model.d_model
    assert config.model.backbone.hidden_sizes == preset.model.backbone.hidden_sizes
    child = tmp_path / "child.yaml"
    child.write_text("base: mine.yaml\ntrain:\n  lr: 1.0e-4\n")  # a base beside the file
    assert load_config(child).train.steps == 123 and load_config(child).train.lr == 1e-4
    path.write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(child)
    path.write_text("base: no_such_preset\n")
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config(path)


def test_eval_takes_set_options(tmp_path, shapes_dir, capsys):
    path = _yaml(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--data", str(shapes_dir), "--out", str(out)]) == 0
    assert main(["eval", str(out), "--data", str(shapes_dir), "--set", "data.image_size=32"]) == 0
    assert main(["eval", str(out), "--data", str(shapes_dir), "--set", "data.image_size=big"]) == 2
    assert "data.image_size must be int" in capsys.readouterr().err
