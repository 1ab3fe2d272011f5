"""benchmarks/time_to_quality.py's mechanics on tiny data: rows as they come, a table and a curve."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import pytest  # noqa: E402
import time_to_quality  # noqa: E402

pytestmark = pytest.mark.slow  # trains through the command line or in other processes


def test_two_recipes_are_trained_scored_and_reported(tiny_folder, tmp_path):
    prefix = str(tmp_path / "ttq")
    argv = ["--data-dir", str(tiny_folder), "--test-dir", str(tiny_folder), "--recipes",
            "keras-io,flow", "--minutes", "0.02", "--eval-every", "0.01", "--num-images", "8",
            "--steps", "2,3", "--image-size", "16", "--widths", "8,16", "--batch-size", "8",
            "--extra-ema-powers", "0.5", "--spacing", "uniform,log_snr", "--output", prefix]
    assert time_to_quality.main(argv) == 0
    with open(prefix + ".jsonl") as file:
        rows = [json.loads(line) for line in file]
    assert [row["recipe"] for row in rows[:2]] == ["floor", "ceiling"]
    assert rows[1]["fd_cifar10"] > rows[0]["fd_cifar10"], "noise scores worse than real images"
    trained = rows[2:]
    assert {(row["recipe"], row["network"], row["spacing"], row["calls"]) for row in trained} == {
        (recipe, network, grid, calls) for recipe in ("keras-io", "flow")
        for network in ("ema", "online", "ema-p0.5") for grid in ("uniform", "log_snr")
        for calls in (2, 3)}
    assert all(row["fd_cifar10"] > 0 and row["steps"] > 0 for row in trained)
    assert {row["settings"]["model"]["formulation"] for row in trained} == {"continuous", "flow"}
    table = open(prefix + ".md").read()
    assert "| keras-io | ema | uniform | 2 |" in table and "| flow | online | log_snr | 3 |" in table
    assert os.path.getsize(prefix + ".png") > 10000


def test_the_measured_winner_is_the_default_and_keras_io_one_flag_away():
    from diffusion_keras.config import RECIPES, TrainingConfig

    assert TrainingConfig().updated(time_to_quality.RECIPES["flow-muon"][1]) == \
        TrainingConfig()
    assert TrainingConfig().updated(time_to_quality.RECIPES["keras-io"][1]) == \
        TrainingConfig().updated(RECIPES["keras-io"])


def test_every_recipe_is_valid_settings_that_say_what_it_changes():
    from diffusion_keras.config import TrainingConfig

    for name, (_, changes) in time_to_quality.RECIPES.items():
        config = TrainingConfig().updated(changes)  # a bad value or name raises UsageError
        for section, values in changes.items():
            for setting, value in values.items():
                assert getattr(getattr(config, section), setting) == value, (name, setting)


def test_an_extra_average_with_the_models_own_settings_is_the_models_ema():
    import numpy as np

    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(image_size=8, widths=(8, 16), block_depth=1, norm="group",
                                    ema_warmup=0.75, seed=0), OptimizationConfig(batch_size=4), 10)
    model.normalizer.adapt(np.full((4, 8, 8, 3), 0.5, "float32"))
    extra = time_to_quality.ExtraAverages([0.75, 0.5], maximum=0.999)
    batch = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    for _ in range(4):  # the model averages the weights its step starts from
        extra.update(model.network.get_weights())
        model.train_on_batch(batch)
    ema = model.ema_network.get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(extra.averages["ema-p0.75"], ema)) < 1e-6
    assert max(np.abs(a - b).max() for a, b in zip(extra.averages["ema-p0.5"], ema)) > 1e-4


def test_bad_extra_ema_powers_grids_and_calls_are_one_line_before_any_work(tmp_path):
    for flags in (["--extra-ema-powers", "0.6,abc"], ["--extra-ema-powers", "-1"],
                  ["--spacing", "uniform,log-snr"], ["--steps", "10,x"], ["--steps", "0"]):
        with pytest.raises(SystemExit, match="error: .*EMA|error: --extra-ema-powers|"
                                             "error: unknown --spacing|error: --steps"):
            time_to_quality.main(["--data-dir", str(tmp_path / "absent"), *flags,
                                  "--output", str(tmp_path / "ttq")])
    assert not os.listdir(tmp_path)
