"""Interrupted runs resume exactly: same weights, same log, same grids as an uninterrupted run.

Exactness holds because everything random is a function of (seed, epoch): the data order
(ImageBatches), the noise (callbacks.EpochSeeds) and the sample grids (fixed seed); the rest of the
state (weights, EMA, normaliser, optimizer) is in the checkpoint.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from diffusion_keras import interrupts, runs, training
from diffusion_keras.cli import train
from diffusion_keras.config import ModelConfig, OptimizationConfig, RunConfig, TrainingConfig
from diffusion_keras.errors import UsageError
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # trains through the command line or in other processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_SETTINGS = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--batch-size", "8",
                "--validation-split", "0.2", "--epochs", "3"]


def config(epochs, seed=0):
    """The settings of CLI_SETTINGS, for the Python API."""
    return TrainingConfig(ModelConfig(widths=TINY["widths"], block_depth=1),
                          OptimizationConfig(epochs=epochs, batch_size=8),
                          RunConfig(validation_split=0.2, seed=seed))


class InterruptAt(keras.callbacks.Callback):
    """Ctrl-C in the middle of an epoch (0-based `epoch`, before step `batch`)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


def log_of(run_dir):
    with open(os.path.join(run_dir, "log.json")) as file:
        return json.load(file)


def grid(run_dir, epoch):
    return np.asarray(Image.open(os.path.join(run_dir, runs.SAMPLES_DIR, f"epoch_{epoch:04d}.png")))


def assert_same_grid(run_dir, reference_dir, epoch):
    """The same sample grid, up to rounding: weights equal to ~1e-6 (the CPU's reduction order
    varies) can tip a few pixels across a level boundary, never further."""
    difference = np.abs(grid(run_dir, epoch).astype(int) - grid(reference_dir, epoch).astype(int))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01


def assert_same_log(log, expected):
    assert [row["epoch"] for row in log] == [row["epoch"] for row in expected]
    for row, expected_row in zip(log, expected):
        assert row.keys() == expected_row.keys()
        np.testing.assert_allclose(list(row.values()), list(expected_row.values()), rtol=1e-5)


def cli_config(data_dir, run_dir):
    """The config.json train.py would have written for the `reference` run."""
    saved = runs.read_json(os.path.join(run_dir, "config.json"), "run settings")
    saved["run"].update(data_dir=str(data_dir), run_dir=run_dir)
    return saved


@pytest.fixture(scope="module")
def tiny_uint8(tiny_folder):
    """The tiny images as train.py reads them from its prepared file: uint8."""
    from diffusion_keras.data import load_image_folder

    return load_image_folder(str(tiny_folder), TINY["image_size"])


@pytest.fixture(scope="module")
def reference(tiny_uint8, tmp_path_factory):
    """An uninterrupted 3-epoch run, seed 0."""
    run_dir = runs.prepare_run_dir(str(tmp_path_factory.mktemp("reference") / "run"))
    model = training.train(tiny_uint8, run_dir, config(3), verbose=0)
    return run_dir, model


def test_same_seed_gives_the_same_log_and_grids(reference, tiny_uint8, tmp_path):
    """(The CLI test below compares whole runs made in other processes, interrupted or not.)"""
    reference_dir, _ = reference
    run_dir = runs.prepare_run_dir(str(tmp_path / "again"))
    training.train(tiny_uint8, run_dir, config(1), verbose=0)
    assert_same_log(log_of(run_dir), log_of(reference_dir)[:1])
    assert_same_grid(run_dir, reference_dir, 1)
    other_dir = runs.prepare_run_dir(str(tmp_path / "other_seed"))
    training.train(tiny_uint8, other_dir, config(1, seed=1), verbose=0)
    assert log_of(other_dir)[0]["noise_loss"] != log_of(reference_dir)[0]["noise_loss"]
    assert not np.array_equal(grid(other_dir, 1), grid(reference_dir, 1))


def test_interrupted_mid_epoch_then_resumed_matches_an_uninterrupted_run(reference, tiny_uint8,
                                                                          tmp_path):
    reference_dir, reference_model = reference
    run_dir = runs.prepare_run_dir(str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_uint8, run_dir, config(3), verbose=0, callbacks=[InterruptAt(1, 2)])
    # the half-trained epoch 2 left nothing behind: no checkpoint, no log row
    assert sorted(os.listdir(os.path.join(run_dir, runs.CHECKPOINT_DIR))) == [
        "best.keras", "epoch_0001.keras"]
    assert [row["epoch"] for row in log_of(run_dir)] == [1]

    point = runs.resume_point(run_dir)
    assert (point.epoch, len(point.history), point.skipped) == (1, 1, [])
    model = training.train(tiny_uint8, run_dir, config(3), verbose=0, resume_from=point)
    assert_same_log(log_of(run_dir), log_of(reference_dir))
    for weight, expected in zip(model.weights, reference_model.weights):
        assert weight.path.split("/")[-1] == expected.path.split("/")[-1]
        np.testing.assert_allclose(np.asarray(weight), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert_same_grid(run_dir, reference_dir, 3)


# The child sends itself a real SIGINT in the middle of epoch 2 (before its second step). It first
# restores Python's Ctrl-C handler: a test run started in the background by a non-interactive shell
# (as CI may do) inherits SIGINT ignored, and then the signal would never arrive.
INTERRUPT_MID_EPOCH_2 = """
import os, signal, sys
from diffusion_keras import callbacks
from diffusion_keras.cli.train import main

signal.signal(signal.SIGINT, signal.default_int_handler)

check = callbacks.StopOnDivergence.on_train_batch_end
def interrupting(self, batch, logs=None):
    check(self, batch, logs)
    if (self.epoch, batch) == (2, 0):
        os.kill(os.getpid(), signal.SIGINT)
callbacks.StopOnDivergence.on_train_batch_end = interrupting
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_then_resume_newest_run_from_the_cli(reference, tiny_folder, tmp_path):
    """Ctrl-C saves nothing half-done and says how to resume; `--resume` continues the newest run
    (in a new process) with a continuous log identical to the uninterrupted one."""
    reference_dir, _ = reference
    env = {**os.environ, "PYTHONPATH": ROOT}
    run_dir = os.path.join("runs", "first")
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_MID_EPOCH_2, "--data-dir", str(tiny_folder),
         "--run-dir", run_dir, *CLI_SETTINGS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 130, result.stderr[-3000:]
    assert f"epochs up to 1 are saved in {run_dir}" in result.stderr
    assert f"resume with: python train.py --resume {run_dir}" in result.stderr
    assert "Traceback" not in result.stderr
    checkpoints = tmp_path / run_dir / runs.CHECKPOINT_DIR
    assert sorted(os.listdir(checkpoints)) == ["best.keras", "epoch_0001.keras"]

    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--resume",
                             "--keep-checkpoints", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run_dir} after epoch 1 of 3" in result.stdout
    assert_same_log(log_of(tmp_path / run_dir), log_of(reference_dir))
    assert_same_grid(tmp_path / run_dir, reference_dir, 3)
    assert sorted(os.listdir(checkpoints)) == ["best.keras", "epoch_0002.keras", "epoch_0003.keras"]


SIGTERM_WHILE_SAVING_EPOCH_1 = """
import os, signal, sys
import keras
from diffusion_keras.cli.train import main

save = keras.Model.save
def save_with_a_kill_in_the_middle(model, path, *args, **kwargs):
    if "epoch_0001" in path:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is being written
    return save(model, path, *args, **kwargs)
keras.Model.save = save_with_a_kill_in_the_middle
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_a_checkpoint_is_written_keeps_that_epoch(tiny_folder, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_SAVING_EPOCH_1, "--data-dir", str(tiny_folder),
         "--run-dir", str(run_dir), *CLI_SETTINGS],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 130, result.stderr[-3000:]
    assert f"interrupted: epochs up to 1 are saved in {run_dir}" in result.stderr
    assert runs.load_checkpoint(runs.checkpoint_path(str(run_dir), 1)) is not None
    assert not runs.run_checkpoints(str(run_dir))[1:], "training stopped after the save"


def test_resume_skips_a_truncated_checkpoint_and_retrains_that_epoch(reference, tiny_folder,
                                                                      tmp_path, capsys):
    reference_dir, _ = reference
    run_dir = str(tmp_path / "run")
    shutil.copytree(reference_dir, run_dir)
    saved = cli_config(tiny_folder, run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump(saved, file)
    newest = runs.checkpoint_path(run_dir, 3)
    with open(newest, "r+b") as file:
        file.truncate(os.path.getsize(newest) // 2)

    point = runs.resume_point(run_dir)
    assert point.epoch == 2 and [row["epoch"] for row in point.history] == [1, 2]
    assert [path for path, _ in point.skipped] == [newest]
    assert "epoch_0003.keras" in point.skipped[0][1] and "truncated" in point.skipped[0][1]

    assert train.main(["--resume", run_dir]) == 0
    assert "epoch_0003.keras' could not be loaded" in capsys.readouterr().err
    assert_same_log(log_of(run_dir), log_of(reference_dir))
    assert runs.load_checkpoint(newest) is not None


@pytest.mark.parametrize("argv, message", [
    ([], "has completed 3 of --epochs 3; pass a larger --epochs"),
    (["--learning-rate", "0.1", "--epochs", "5"], "drop --learning-rate"),
    (["--run-dir", "elsewhere"], "drop --run-dir"),
])
def test_resume_refuses_what_would_not_continue_the_run(argv, message, reference, tiny_folder,
                                                        capsys):
    reference_dir, _ = reference
    saved = cli_config(tiny_folder, reference_dir)
    with open(os.path.join(reference_dir, "config.json"), "w") as file:
        json.dump(saved, file)
    assert train.main(["--resume", reference_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_library_keeps_the_same_resume_rules(reference, tiny_uint8, tmp_path):
    """`training.train(resume_from=...)` refuses what train.py --resume refuses, before any work."""
    run_dir = str(tmp_path / "copy")
    shutil.copytree(reference[0], run_dir)
    point = runs.resume_point(run_dir)
    runs.write_json(os.path.join(run_dir, "config.json"), TrainingConfig(
        point.model.config, config(3).optimization, config(3).run).to_dict())
    before = sorted(os.listdir(os.path.join(run_dir, runs.CHECKPOINT_DIR)))
    for changed, message in [
            (config(3), "has completed 3 of --epochs 3; pass a larger --epochs"),
            (config(5).updated({"optimization": {"learning_rate": 0.1}}),
             r"keeps the settings it started with; \['optimization.learning_rate'\] differ"),
            (config(5, seed=1), r"\['run.seed'\] differ")]:
        with pytest.raises(UsageError, match=message):
            training.train(tiny_uint8, run_dir, changed, verbose=0, resume_from=point)
    assert sorted(os.listdir(os.path.join(run_dir, runs.CHECKPOINT_DIR))) == before


def test_resume_without_runs_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume"]) == 2
    assert "no run under 'runs' has a checkpoint to resume from" in capsys.readouterr().err
    os.makedirs(tmp_path / "runs" / "broken" / "checkpoints")
    (tmp_path / "runs" / "broken" / "checkpoints" / "epoch_0001.keras").write_text("")
    (tmp_path / "runs" / "broken" / "config.json").write_text("{")
    assert train.main(["--resume"]) == 2
    assert "config.json' is not valid JSON" in capsys.readouterr().err


def test_signal_during_training_is_reported_as_interrupted(tmp_path, tiny_folder, monkeypatch,
                                                           capsys):
    """SIGTERM (a scheduler's kill) is handled like Ctrl-C: a request to stop at the next batch."""
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not interrupts.requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        interrupts.check()  # where training's next batch would begin

    monkeypatch.setattr(training, "train", killed)
    run_dir = tmp_path / "run"
    code = train.main(["--data-dir", str(tiny_folder), "--run-dir", str(run_dir), *CLI_SETTINGS])
    assert code == 130
    err = capsys.readouterr().err
    assert "stopping training at the next batch" in err
    assert "interrupted: no epoch had completed" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
