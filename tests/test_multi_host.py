"""Two real JAX processes on localhost (CPU collectives, one fake device each) run train.py, a
SIGTERM, --resume, generate.py and evaluate.py with --distribute and the README's variables: the
weights match a single-process run, only process 0 writes, and a process that stops ends the
other with one line instead of a hang."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from diffusion_keras import runs
from diffusion_keras.plotting import save_image_grid

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 32 pixels, so evaluate.py scores in the small CIFAR-10 features (InceptionV3 compiles for a minute)
TINY = ["--image-size", "32", "--widths", "8,16", "--block-depth", "1", "--batch-size", "8",
        "--validation-split", "0.2"]
EPOCHS = ["--epochs", "2"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def environment(**extra):
    return {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **extra}


class Processes:
    """`count` processes of one command, joined as one multi-host run through the variables the
    README shows; each one's output in a file (`log(index)`)."""

    def __init__(self, argv, folder, count=2, argv_of=None):
        port = free_port()
        self.logs = [folder / f"process{index}.log" for index in range(count)]
        self.processes = []
        for index in range(count):
            env = environment(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
                              KERAS_DISTRIBUTION_NUM_PROCESSES=str(count),
                              KERAS_DISTRIBUTION_PROCESS_ID=str(index))
            with open(self.logs[index], "w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, *(argv_of(index) if argv_of else argv)], cwd=ROOT, env=env,
                    stdout=log, stderr=subprocess.STDOUT, text=True))

    def log(self, index):
        return self.logs[index].read_text()

    def wait(self, timeout=600):
        return [process.wait(timeout) for process in self.processes]


def last_line(text):
    lines = [line for line in text.strip().splitlines()
             if line.strip() and not line.startswith(("I0000", "W0000", "WARNING: All"))]
    return lines[-1]


def weights(path):
    model = runs.load_checkpoint(str(path))
    return [np.asarray(weight) for weight in model.network.weights + model.ema_network.weights]


@pytest.fixture(scope="module")
def single(tiny_folder, tmp_path_factory):
    """The reference: one process on one device."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    result = subprocess.run([sys.executable, "train.py", "--data-dir", str(tiny_folder),
                             "--run-dir", str(run_dir), *TINY, *EPOCHS], cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def resumed(tiny_folder, tmp_path_factory):
    """Two processes, process 1 sent SIGTERM in epoch 2 (of 2), then both resumed to the end."""
    folder = tmp_path_factory.mktemp("two")
    run_dir = folder / "run"
    train = ["train.py", "--distribute", "--data-dir", str(tiny_folder), "--run-dir", str(run_dir),
             *TINY, *EPOCHS]
    interrupted = Processes(train, folder)
    deadline = time.monotonic() + 300
    while "Epoch 2/2" not in interrupted.log(1) and time.monotonic() < deadline:
        time.sleep(0.2)
    interrupted.processes[1].send_signal(signal.SIGTERM)
    started = time.monotonic()
    codes = interrupted.wait()
    stopped_after = time.monotonic() - started
    logs = [interrupted.log(0), interrupted.log(1)]
    (folder / "again").mkdir()
    again = Processes(["train.py", "--resume", str(run_dir)], folder / "again")
    assert again.wait() == [0, 0], again.log(0)[-3000:] + again.log(1)[-3000:]
    return {"run_dir": run_dir, "codes": codes, "logs": logs, "stopped_after": stopped_after,
            "resumed_logs": [again.log(0), again.log(1)]}


def test_sigterm_to_one_process_stops_both_with_one_line_each(resumed):
    assert resumed["codes"] == [1, 130], resumed["logs"]
    assert resumed["stopped_after"] < 60, "no process waits for ever in a collective"
    assert "stopping training at the next batch" in resumed["logs"][1]
    assert last_line(resumed["logs"][1]).startswith("interrupted: epochs up to ")
    assert last_line(resumed["logs"][0]).startswith("error: ")
    assert "Traceback" not in resumed["logs"][0] + resumed["logs"][1]
    for log in resumed["logs"]:  # JAX runs load TensorFlow (Keras seeds it): its lines stay quiet
        assert "oneDNN" not in log and "I0000" not in log and "absl::InitializeLog" not in log


def test_two_processes_resumed_end_with_the_weights_of_one_process(resumed, single):
    final = runs.checkpoint_path(resumed["run_dir"], 2)
    gaps = [np.abs(a - b).max() for a, b in zip(weights(final),
                                                 weights(runs.checkpoint_path(single, 2)))]
    assert max(gaps) < 1e-5
    assert max(np.abs(weight).max() for weight in weights(final)) > 0.1  # trained: gap means much
    with open(resumed["run_dir"] / "log.json") as two, open(single / "log.json") as one:
        two, one = json.load(two), json.load(one)
    assert [row["epoch"] for row in two] == [1, 2]
    assert "val_noise_loss" in two[0], "validation ran on the sharded held-out images"
    np.testing.assert_allclose([row["val_noise_loss"] for row in two],
                               [row["val_noise_loss"] for row in one], rtol=1e-4)


def test_only_process_zero_wrote_and_every_picture_is_there(resumed, single):
    run_dir = resumed["run_dir"]
    resumed_has_no_untrained_samples = {"samples_untrained_vs_trained.png"}
    assert set(os.listdir(run_dir / "plots")) == set(os.listdir(single / "plots")) - \
        resumed_has_no_untrained_samples
    assert sorted(os.listdir(run_dir / "samples")) == [f"epoch_{epoch:04d}.png"
                                                       for epoch in range(1, 3)]
    assert not [name for _, folders, names in os.walk(run_dir) for name in folders + names
                if ".tmp" in name]
    for log in resumed["resumed_logs"]:
        assert last_line(log).startswith(f"done: checkpoints in {run_dir}")


def test_generate_and_evaluate_over_two_processes_match_one(resumed, tiny_folder, tmp_path):
    run_dir = resumed["run_dir"]
    sample = ["--checkpoint", str(run_dir), "--steps", "3", "--num-images", "6"]
    name = "best_dpmpp2m_log_snr_steps3_seed0_n6"
    two = Processes(["generate.py", *sample, "--distribute", "--quiet", "--output",
                     str(tmp_path / "two")], tmp_path)
    assert two.wait() == [0, 0], two.log(0)[-3000:]
    assert f"wrote {tmp_path / 'two'}" in two.log(0) and "wrote" not in two.log(1)
    one = runs.load_checkpoint(str(runs.find_checkpoint(str(run_dir))))  # here, in one process
    save_image_grid(one.generate(6, 3, seed=0, verbose=False), str(tmp_path / "one.png"))
    grids = [np.asarray(Image.open(path)).astype(int)
             for path in (tmp_path / "two" / f"samples_{name}.png", tmp_path / "one.png")]
    assert np.abs(grids[0] - grids[1]).max() <= 1  # deterministic samplers: any backend

    (tmp_path / "evaluate").mkdir()
    scored = Processes(["evaluate.py", *sample, "--kid-images", "6", "--data-dir", str(tiny_folder),
                        "--features", "cifar10", "--distribute", "--quiet"], tmp_path / "evaluate")
    assert scored.wait() == [0, 0], scored.log(0)[-3000:]
    results = list((run_dir / "checkpoints").glob("best_evaluation_cifar10_*_n6.json"))
    assert len(results) == 1 and "FD-cifar10" in scored.log(0) and "wrote" not in scored.log(1)


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_the_stop_line_stands_alone_after_a_half_printed_line(unbuffered):
    """The watcher leaves while the main thread is halfway through a line (a progress bar, or
    `print` between its text and its newline): the error still gets a line of its own."""
    code = ("import sys; from diffusion_keras import distributed; "
            "sys.stdout.write('training on 39 images'); sys.stderr.write('half'); "
            "distributed.leave(1, 'error: process 1 stopped')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=environment(PYTHONUNBUFFERED=unbuffered))
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "error: process 1 stopped"
    assert "training on 39 images" in result.stdout and "half" in result.stdout


def test_a_process_that_fails_ends_the_other_with_one_line(tiny_folder, tmp_path):
    def argv(index):
        data = tiny_folder if index == 0 else tmp_path / "missing"
        return ["train.py", "--distribute", "--data-dir", str(data), "--run-dir",
                str(tmp_path / "run"), *TINY, *EPOCHS]

    started = time.monotonic()
    processes = Processes(None, tmp_path, argv_of=argv)
    assert processes.wait() == [1, 2]
    assert time.monotonic() - started < 120
    assert last_line(processes.log(1)).startswith("error: --data-dir")
    assert last_line(processes.log(0)) == ("error: process 1 stopped (exit code 2); stopping "
                                           "process 0 too")
