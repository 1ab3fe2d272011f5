"""benchmarks/time_to_quality.py's mechanics on tiny data: rows as they come, a table and a curve."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import time_to_quality  # noqa: E402


def test_two_recipes_are_trained_scored_and_reported(tiny_folder, tmp_path):
    prefix = str(tmp_path / "ttq")
    argv = ["--data-dir", str(tiny_folder), "--test-dir", str(tiny_folder), "--recipes",
            "keras-io,flow", "--minutes", "0.02", "--eval-every", "0.01", "--num-images", "8",
            "--steps", "2", "--image-size", "16", "--widths", "8,16", "--batch-size", "8",
            "--output", prefix]
    assert time_to_quality.main(argv) == 0
    with open(prefix + ".jsonl") as file:
        rows = [json.loads(line) for line in file]
    assert [row["recipe"] for row in rows[:2]] == ["floor", "ceiling"]
    assert rows[1]["fd_cifar10"] > rows[0]["fd_cifar10"], "noise scores worse than real images"
    trained = rows[2:]
    assert {(row["recipe"], row["network"]) for row in trained} == {
        (recipe, network) for recipe in ("keras-io", "flow") for network in ("ema", "online")}
    assert all(row["fd_cifar10"] > 0 and row["steps"] > 0 for row in trained)
    assert {row["settings"]["model"]["formulation"] for row in trained} == {"continuous", "flow"}
    table = open(prefix + ".md").read()
    assert "| keras-io | ema |" in table and "| flow | online |" in table
    assert os.path.getsize(prefix + ".png") > 10000


def test_the_measured_winner_is_the_default_and_keras_io_one_flag_away():
    from diffusion_keras.config import RECIPES, TrainingConfig

    assert TrainingConfig().updated(time_to_quality.RECIPES["flow"][1]) == TrainingConfig()
    assert TrainingConfig().updated(time_to_quality.RECIPES["keras-io"][1]) == \
        TrainingConfig().updated(RECIPES["keras-io"])
