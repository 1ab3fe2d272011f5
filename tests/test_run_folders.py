"""A run folder holds exactly one run: never reused by a new run, claimed atomically, its stale
temporaries cleaned; what resuming may change is checked before any work."""

import json
import os
import subprocess
import sys
import time

import pytest

from diffusion_keras import runs, training
from diffusion_keras.cli import generate, train
from diffusion_keras.config import ModelConfig, OptimizationConfig, RunConfig, TrainingConfig
from diffusion_keras.errors import UsageError
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # trains through the command line or in other processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_SETTINGS = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--batch-size", "8",
                "--validation-split", "0"]


@pytest.fixture(scope="module")
def finished_run(tiny_folder, tmp_path_factory):
    """One epoch with a cosine learning rate (which decays to 0 at its last epoch)."""
    run_dir = tmp_path_factory.mktemp("runs") / "a"
    assert train.main(["--data-dir", str(tiny_folder), "--run-dir", str(run_dir), "--epochs", "1",
                       "--learning-rate-schedule", "cosine", *CLI_SETTINGS]) == 0
    return run_dir


def snapshot(folder):
    return {os.path.relpath(os.path.join(root, name), folder): os.path.getmtime(
        os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names}


def test_a_new_run_in_a_folder_that_holds_a_run_is_refused(finished_run, tiny_folder, capsys):
    before = snapshot(finished_run)
    assert train.main(["--data-dir", str(tiny_folder), "--run-dir", str(finished_run),
                       "--epochs", "2", *CLI_SETTINGS]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already holds a run" in error
    assert f"--resume {finished_run}" in error
    assert snapshot(finished_run) == before, "nothing of the earlier run was touched"


def test_the_library_refuses_it_too(finished_run, tiny_images):
    config = TrainingConfig(ModelConfig(widths=TINY["widths"], block_depth=1),
                            OptimizationConfig(epochs=1, batch_size=8), RunConfig(validation_split=0))
    with pytest.raises(UsageError, match="already holds a run"):
        training.train(tiny_images, str(finished_run), config, verbose=0)


def test_a_saved_config_is_a_template_for_a_new_folder(finished_run, tiny_folder, tmp_path,
                                                       monkeypatch, capsys):
    before = snapshot(finished_run)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--config", str(finished_run / "config.json"), "--epochs", "1",
                       "--plot-every", "5"]) == 0
    assert snapshot(finished_run) == before
    (new_run,) = os.listdir(tmp_path / "runs")
    config = json.loads((tmp_path / "runs" / new_run / "config.json").read_text())
    assert config["run"]["data_dir"] == str(tiny_folder)  # the template's data, in a new folder
    assert config["run"]["run_dir"] == os.path.join("runs", new_run)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda pattern: "20261201-120000")
    first, second = runs.new_run_dir(str(tmp_path)), runs.new_run_dir(str(tmp_path))
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    runs.claim_run_dir(first)
    with pytest.raises(UsageError, match="already holds a run"):
        runs.claim_run_dir(first)  # the config.json of a claim is made exclusively
    runs.release_run_dir(second)
    assert not os.path.exists(second)


def test_two_train_processes_at_once_never_share_a_folder(tiny_folder, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", str(tiny_folder),
               "--epochs", "1", *CLI_SETTINGS]
    env = {**os.environ, "PYTHONPATH": ROOT}
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:]
    folders = os.listdir(tmp_path / "runs")
    assert len(folders) == 2
    for folder in folders:
        log = json.loads((tmp_path / "runs" / folder / "log.json").read_text())
        assert [row["epoch"] for row in log] == [1]


def test_a_failed_start_leaves_no_new_folder(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--data-dir", str(tiny_folder), "--epochs", "1", *CLI_SETTINGS[:-2],
                       "--batch-size", "64"]) == 2  # more than the 48 images
    assert "only 48 images for batch size 64" in capsys.readouterr().err
    assert os.listdir(tmp_path / "runs") == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / f".epoch_0002.tmp{dead}.keras",
             tmp_path / f".images-16px-abc.tmp{dead}.u8", tmp_path / f".samples_x.tmp{dead}"]
    stale[0].write_text("half a checkpoint")
    stale[1].write_text("half a dataset")
    stale[2].mkdir()
    (stale[2] / "0000.png").write_text("staged")
    live = tmp_path / f".epoch_0003.tmp{os.getpid()}.keras"
    live.write_text("being written")
    kept = tmp_path / "epoch_0001.keras"
    kept.write_text("whole")
    runs.remove_stale_temporaries(str(tmp_path))
    assert not any(path.exists() for path in stale)
    assert live.exists() and kept.exists()


def test_a_dangling_link_as_output_is_one_line_before_sampling(finished_run, tmp_path, capsys):
    link = tmp_path / "out"
    os.symlink(tmp_path / "nowhere", link)
    assert generate.main(["--checkpoint", str(finished_run), "--steps", "2", "--num-images", "2",
                          "--output", str(link)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "link to nothing" in error


def test_resuming_a_cosine_run_with_more_epochs_is_refused(finished_run, capsys):
    before = snapshot(finished_run)
    assert train.main(["--resume", str(finished_run), "--epochs", "3"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "decays its learning rate to 0 at epoch 1" in error and "start a new run" in error
    assert snapshot(finished_run) == before
