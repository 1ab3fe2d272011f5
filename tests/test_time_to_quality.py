"""benchmarks/time_to_quality.py's mechanics on tiny data: rows as they come, a table and a curve."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import pytest  # noqa: E402
import time_to_quality  # noqa: E402

pytestmark = pytest.mark.slow  # trains through the command line or in other processes


def test_two_recipes_train_through_the_product_path_and_are_scored_and_reported(tiny_folder,
                                                                                 tmp_path):
    argv = ["--data-dir", str(tiny_folder), "--test-dir", str(tiny_folder), "--recipes",
            "keras-io,flow", "--repeats", "2", "--minutes", "0.05", "--eval-every", "0.025",
            "--num-images", "8", "--steps", "2", "--image-size", "16", "--widths", "8,16",
            "--batch-size", "8", "--extra-ema-powers", "0.5", "--spacing", "uniform,log_snr",
            "--name", "ttq", "--results-root", str(tmp_path / "results"),
            "--runs-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert time_to_quality.main(argv) == 0
    [folder] = (tmp_path / "results").iterdir()
    assert folder.name.endswith("-ttq")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["command"].startswith("benchmarks/time_to_quality.py --data-dir")
    assert manifest["machine"]["backend"] and manifest["machine"]["cpu"]["model"]
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert [row["recipe"] for row in rows[:2]] == ["floor", "ceiling"]
    assert rows[1]["fd_cifar10"] > rows[0]["fd_cifar10"], "noise scores worse than real images"
    trained = rows[2:]
    assert {(row["recipe"], row["run"], row["network"], row["spacing"], row["calls"])
            for row in trained} == {
        (recipe, run, network, grid, calls) for recipe in ("keras-io", "flow") for run in (1, 2)
        for network in ("ema", "online", "ema-p0.5") for grid in ("uniform", "log_snr")
        for calls in (2,)}
    assert [row["recipe"] for row in trained if row["run"] == 2][0] == "flow", "run 2 reversed"
    assert all(row["fd_cifar10"] > 0 and row["steps"] > 0 for row in trained)
    assert {row["settings"]["model"]["formulation"] for row in trained} == {"continuous", "flow"}
    # each recipe trained as train.py trains: its own run folder, log, checkpoints and grids
    for recipe in ("keras-io", "flow"):
        run_dir = tmp_path / "runs" / f"{folder.name}-{recipe}-1"
        assert (run_dir / "log.csv").exists() and list((run_dir / "checkpoints").iterdir())
        assert list((run_dir / "samples").iterdir())
    table = (folder / "table.md").read_text()
    assert "| keras-io | 1 | ema | uniform | 2 |" in table
    assert "| flow | 2 | online | log_snr | 2 |" in table
    assert (folder / "curves.png").stat().st_size > 10000
    (folder / "table.md").unlink()
    assert time_to_quality.main(["--redraw", str(folder)]) == 0
    assert (folder / "table.md").read_text() == table
    # the trained networks scored again with another sampler, from each run's last checkpoint
    assert time_to_quality.main([
        "--rescore", str(folder), "--data-dir", str(tiny_folder), "--image-size", "16",
        "--sampler", "ddim", "--spacing", "uniform", "--steps", "3", "--num-images", "8",
        "--runs-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]) == 0
    rescored = [json.loads(line) for line in (folder / "rescored.jsonl").read_text().splitlines()]
    assert {(row["recipe"], row["run"], row["network"], row["sampler"], row["calls"])
            for row in rescored} == {(recipe, run, network, "ddim", 3) for recipe in ("keras-io", "flow")
                                     for run in (1, 2) for network in ("ema", "online")}
    last = {(row["recipe"], row["run"]): row["steps"] for row in trained}
    assert all(row["steps"] == last[(row["recipe"], row["run"])] for row in rescored)


def test_the_default_grid_is_the_samplers_own(tmp_path):
    from diffusion_keras.samplers import sampler_record

    args = time_to_quality.checked(time_to_quality.parser().parse_args(["--data-dir", "x"]))
    assert args.spacing == [None] and args.sampler == "dpmpp2m"
    assert sampler_record(args.sampler).default_spacing in time_to_quality.settings.SPACINGS


def test_the_clock_stops_at_the_budget_and_does_not_count_scoring():
    import keras
    import numpy as np

    clock_time, scored_at = [0.0], []

    class OneSecondSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock_time[0] += 1.0

    def slow_score(model, minutes, steps):
        scored_at.append((round(minutes * 60), steps))
        clock_time[0] += 100.0  # were scoring counted, the first score would end the budget

    clock = time_to_quality.QualityClock(budget=10, every=3, score=slow_score, now=lambda: clock_time[0],
                                         extra=time_to_quality.ExtraAverages([], 0.999))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = np.zeros((64, 2), "float32")
    history = model.fit(data, data[:, :1], batch_size=4, epochs=100, verbose=0,
                        callbacks=[OneSecondSteps(), clock])
    assert scored_at == [(3, 3), (6, 6), (9, 9), (10, 10)]
    assert len(history.epoch) == 1 and model.stop_training, "stopped after 10 of 16 steps"


def test_the_measured_winner_is_the_default_and_keras_io_one_flag_away():
    from diffusion_keras.config import RECIPES, TrainingConfig

    assert TrainingConfig().updated(time_to_quality.CANDIDATES["flow-muon"][1]) == \
        TrainingConfig()
    assert TrainingConfig().updated(time_to_quality.CANDIDATES["keras-io"][1]) == \
        TrainingConfig().updated(RECIPES["keras-io"])


def test_every_recipe_is_valid_settings_that_say_what_it_changes():
    from diffusion_keras.config import TrainingConfig

    for name, (_, changes) in time_to_quality.CANDIDATES.items():
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


@pytest.mark.parametrize("flags, message", [
    (["--extra-ema-powers", "0.6,abc"], "--extra-ema-powers: must be comma-separated numbers"),
    (["--extra-ema-powers", "-1"], "--extra-ema-powers: must be positive, got -1.0"),
    (["--extra-ema-max", "1"], "--extra-ema-max: must be in (0, 1), got 1.0"),
    (["--spacing", "uniform,log-snr"], "--spacing: unknown grid 'log-snr'"),
    (["--steps", "10,x"], "--steps: must be comma-separated integers"),
    (["--steps", "0"], "--steps: must be a positive integer, got 0"),
    (["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    (["--recipes", "keras-io,nope"], "unknown recipe(s) ['nope']"),
])
def test_bad_flags_are_one_line_before_any_work(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        time_to_quality.main(["--data-dir", str(tmp_path / "absent"), *flags,
                              "--results-root", str(tmp_path / "results")])
    error = capsys.readouterr().err or str(exit.value)  # argparse's line, or sys.exit's
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not os.listdir(tmp_path)
