"""Settings in one home: round trips, the formulation's defaults, files with flags on top."""

import json
import os
import re

import pytest

from diffusion_keras.cli import train
from diffusion_keras.config import (
    FORMULATION_DEFAULTS,
    ModelConfig,
    OptimizationConfig,
    RunConfig,
    TrainingConfig,
    read_config,
)
from diffusion_keras.errors import UsageError
from tests.conftest import TINY


def test_training_config_round_trips_through_json():
    config = TrainingConfig(ModelConfig(widths=(8, 16), attention_resolutions=(16,), ema_warmup=0.75),
                            OptimizationConfig(epochs=3, learning_rate_schedule="cosine"),
                            RunConfig(data_dir="images", seed=4))
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_model_config_is_exactly_what_the_model_saves():
    from diffusion_keras import DiffusionModel

    model = DiffusionModel(ModelConfig(**TINY, formulation="flow"), seed=3)
    saved = model.get_config()
    assert {name: saved[name] for name in ModelConfig.field_names()} == model.config.to_dict()
    assert model.config.seed == 3 and model.config.schedule == "flow"
    assert DiffusionModel.from_config(saved).config == model.config


@pytest.mark.parametrize("formulation", sorted(FORMULATION_DEFAULTS))
def test_unset_settings_take_the_formulation_defaults(formulation):
    config = ModelConfig(formulation=formulation).resolved()
    for name, value in FORMULATION_DEFAULTS[formulation].items():
        assert getattr(config, name) == value
    assert config.loss_target == config.prediction
    assert ModelConfig(formulation=formulation, prediction="v").resolved().prediction == "v"


@pytest.mark.parametrize("section, values, message", [
    (ModelConfig, {"ema": float("nan")}, "ema momentum must be a finite number"),
    (ModelConfig, {"formulation": "score"}, "unknown formulation"),
    (ModelConfig, {"loss_weighting": "snr"}, "unknown loss weighting"),
    (ModelConfig, {"formulation": "ddpm", "time_distribution": "lognormal"}, "integer timesteps"),
    (ModelConfig, {"formulation": "flow", "schedule": "offset_cosine", "prediction": "epsilon"},
     "the flow formulation's path is the flow schedule, not 'offset_cosine'"),
    (ModelConfig, {"formulation": "continuous", "schedule": "flow"},
     "the flow schedule is the flow formulation's path"),
    (ModelConfig, {"formulation": "ddpm", "prediction": "flow"}, "the flow prediction is the velocity"),
    (ModelConfig, {"formulation": "continuous", "loss_target": "flow"}, "the flow loss target"),
    (OptimizationConfig, {"learning_rate": -1.0}, "learning rate must be non-negative"),
    (OptimizationConfig, {"optimizer": "sgd"}, "unknown optimizer"),
    (OptimizationConfig, {"warmup_steps": -1}, "warm-up steps"),
    (RunConfig, {"validation_split": 1.0}, "validation split must be in [0, 1)"),
])
def test_bad_values_are_refused_in_one_line(section, values, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        section(**values)


def test_a_config_file_with_flags_on_top(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"widths": [8, 16], "formulation": "flow"},
                                "optimization": {"epochs": 7, "batch_size": 16}}))
    config = train.config_from_args(train.parser().parse_args(
        ["--config", str(path), "--epochs", "3", "--ema-warmup", "0.5"]))
    assert config.optimization == OptimizationConfig(epochs=3, batch_size=16)
    assert config.model == ModelConfig(widths=(8, 16), formulation="flow", ema_warmup=0.5)
    assert config.run == RunConfig()


def test_a_config_file_with_an_unknown_setting_names_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"width": [8, 16]}}))
    with pytest.raises(UsageError, match=r"unknown setting\(s\) \['width'\]"):
        read_config(str(path))
    path.write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_config(str(path))


def test_help_shows_defaults_from_the_config_once(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: 32,64,96,128)" in text and "(default: 0.999)" in text
    assert "(default: None)" not in text and "[32, 64" not in text


def test_a_recipe_is_one_flag_with_config_files_and_flags_on_top(tmp_path):
    from diffusion_keras.config import RECIPES

    config = train.config_from_args(train.parser().parse_args(["--recipe", "keras-io"]))
    assert config == TrainingConfig().updated(RECIPES["keras-io"])
    assert config.model.ema_warmup == 0.0 and config.model.ema == 0.999
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"optimization": {"epochs": 2}}))
    config = train.config_from_args(train.parser().parse_args(
        ["--recipe", "keras-io", "--config", str(path), "--batch-size", "16"]))
    assert config.model == TrainingConfig().updated(RECIPES["keras-io"]).model
    assert (config.optimization.epochs, config.optimization.batch_size) == (2, 16)


@pytest.mark.slow
def test_presets_have_the_parameter_counts_help_shows(capsys):
    from diffusion_keras.config import PRESET_PARAMETERS, PRESETS
    from diffusion_keras.unet import build_unet

    for name, preset in PRESETS.items():
        config = TrainingConfig().updated(preset)
        assert build_unet(config.model.resolved()).count_params() == PRESET_PARAMETERS[name], name
    with pytest.raises(SystemExit):
        train.parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ddpm-cifar (35.8M parameters)" in text and "128px (38.1M parameters)" in text


def test_a_preset_sits_under_recipes_and_flags():
    config = train.config_from_args(train.parser().parse_args(
        ["--preset", "64px", "--recipe", "keras-io", "--batch-size", "16"]))
    assert config.model.image_size == 64 and config.model.attention_resolutions == (16, 8)
    assert config.model.ema == 0.999  # the recipe's, on top of the preset's 0.9995
    assert config.optimization.batch_size == 16 and config.optimization.clip_norm == 1.0


def test_a_model_seed_other_than_the_runs_is_refused_before_any_folder(tmp_path):
    import numpy as np

    from diffusion_keras import training

    images = np.zeros((16, 16, 16, 3), "uint8")
    config = TrainingConfig(ModelConfig(seed=5), run=RunConfig(seed=0))
    with pytest.raises(UsageError, match="the model's seed 5 is not the run's seed 0"):
        training.train(images, str(tmp_path / "run"), config)
    assert not os.listdir(tmp_path)


def test_a_config_file_template_does_not_carry_its_model_seed(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"seed": 3}, "run": {"seed": 3}}))
    config = train.config_from_args(train.parser().parse_args(["--config", str(path), "--seed", "7"]))
    assert config.model.seed is None and config.run.seed == 7
