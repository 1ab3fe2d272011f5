"""The CLIs end to end on a tiny folder, their bad-input errors, and training on every backend."""

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from diffusion_keras import backend
from diffusion_keras.cli import generate, train
from diffusion_keras.errors import UsageError
from diffusion_keras.samplers import SAMPLERS
from tests.conftest import NO_TENSORFLOW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARGS = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained_run(tiny_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    code = train.main(["--data-dir", str(tiny_folder), "--epochs", "2", "--run-dir", str(run_dir),
                       "--validation-split", "0.2", "--tensorboard", *TINY_ARGS])
    assert code == 0
    return run_dir


def test_train_leaves_checkpoints_samples_and_log(trained_run):
    assert sorted(os.listdir(trained_run / "checkpoints")) == [
        "best.keras", "epoch_0001.keras", "epoch_0002.keras"]
    assert sorted(os.listdir(trained_run / "samples")) == ["epoch_0001.png", "epoch_0002.png"]
    log = json.loads((trained_run / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    assert {"noise_loss", "image_loss", "val_noise_loss"} <= set(log[0])
    assert (trained_run / "log.csv").read_text().startswith("epoch,")
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["channels"] == 3 and config["metadata"] == {"num_images": 48}
    assert config["model"]["prediction"] == "flow", "the formulation's defaults are recorded"
    assert not [name for name in os.listdir(trained_run / "checkpoints") if ".tmp" in name]


def test_generate_writes_grid_interpolation_and_metadata(trained_run, tmp_path):
    checkpoint = trained_run / "checkpoints" / "epoch_0002.keras"
    code = generate.main(["--checkpoint", str(checkpoint), "--steps", "3", "--num-images", "4",
                          "--interpolate", "--frames", "3", "--individual",
                          "--output", str(tmp_path)])
    assert code == 0
    names = sorted(os.listdir(tmp_path))
    name = "epoch_0002_dpmpp2m_log_snr_steps3_seed0"
    assert f"samples_{name}_n4.png" in names
    assert f"interpolation_{name}_frames3.png" in names
    assert sorted(os.listdir(tmp_path / f"samples_{name}_n4")) == [
        "0000.png", "0001.png", "0002.png", "0003.png"]
    metadata = json.loads((tmp_path / f"samples_{name}_n4.json").read_text())
    assert sorted(map(os.path.basename, metadata["files"])) == sorted(
        name for name in names if not name.endswith(".json"))
    assert metadata["steps"] == 3 and metadata["sampler"] == "dpmpp2m"
    assert metadata["spacing"] == SAMPLERS["dpmpp2m"].default_spacing
    assert metadata["batch_size"] == backend.default_sample_batch_size()


def test_generate_defaults_to_the_newest_checkpoint_under_runs(trained_run, tmp_path, monkeypatch):
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    os.symlink(trained_run, runs_root / "a")
    monkeypatch.chdir(tmp_path)
    assert generate.main(["--steps", "2", "--num-images", "2"]) == 0
    grid = "samples_epoch_0002_dpmpp2m_log_snr_steps2_seed0_n2.png"
    assert os.path.exists(trained_run / "generated" / grid)


def test_ctrl_c_while_generating_is_one_line_and_leaves_no_file(trained_run, tmp_path,
                                                                monkeypatch, capsys):
    from diffusion_keras import runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "load_checkpoint", interrupted)
    code = generate.main(["--checkpoint", str(trained_run / "checkpoints" / "best.keras"),
                          "--output", str(tmp_path / "out")])
    assert code == 130
    assert capsys.readouterr().err.strip().startswith("interrupted")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def exit_code(main, argv):
    """What the process would exit with: main's return value or argparse's SystemExit code."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def assert_one_line_error(capsys, message):
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert "usage:" not in err


@pytest.mark.parametrize("argv, message", [
    (["--data-dir", "{missing}"], "does not exist"),
    (["--data-dir", "{empty}"], "holds no image files"),
    (["--data-dir", "{folder}", "--image-size", "17"], "not divisible by 2"),
    (["--data-dir", "{folder}", "--epochs", "0"], "--epochs: must be a positive integer"),
    (["--data-dir", "{folder}", "--batch-size", "-4"], "--batch-size: must be a positive integer"),
    (["--data-dir", "{folder}", "--validation-split", "1.5"], "validation split must be in [0, 1), got 1.5"),
    (["--data-dir", "{folder}", "--learning-rate=-1e-3"], "learning rate must be non-negative"),
    (["--data-dir", "{folder}", "--weight-decay", "-1"], "weight decay must be non-negative"),
    (["--data-dir", "{folder}", "--clip-norm", "0"], "clip norm must be positive"),
    (["--data-dir", "{folder}", "--learning-rate", "nan"], "learning rate must be a finite number"),
    (["--data-dir", "{folder}", "--config", "{missing}"], "cannot read config file"),
    (["--data-dir", "{folder}", "--batch-size", "1000"], "only 48 images for batch size 1000"),
    (["--data-dir", "{file}"], "is not a folder"),
    (["--data-dir", "{missing}", "--seed", "-1"], "seed must be a non-negative integer"),
    (["--data-dir", "{missing}", "--learning-rate", "nan"], "learning rate must be a finite number"),
    (["--data-dir", "{folder}", "--formulation", "flow", "--schedule", "offset_cosine",
      "--prediction", "epsilon"], "the flow formulation's path is the flow schedule"),
])
def test_train_bad_input_is_one_line_and_exit_2_with_no_run_folder(argv, message, tiny_folder,
                                                                   tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.jpg").write_text("a file")
    values = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "folder": tiny_folder,
              "file": tmp_path / "file.jpg"}
    argv = [arg.format(**values) for arg in argv]
    run_dir = tmp_path / "run"
    assert exit_code(train.main, [*TINY_ARGS[2:], *argv, "--run-dir", str(run_dir)]) == 2
    assert_one_line_error(capsys, message)
    assert not run_dir.exists(), "a run that could not start leaves no folder behind"


def test_a_failed_start_under_runs_leaves_nothing_for_resume_to_pick(trained_run, tiny_folder,
                                                                    tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs")
    os.symlink(trained_run, "runs/good")
    assert train.main(["--data-dir", str(tiny_folder), "--batch-size", "1000"]) == 2
    assert os.listdir("runs") == ["good"]
    # a folder without a checkpoint (a run killed in its first epoch, say) is passed over too
    os.makedirs("runs/newer/checkpoints")
    (tmp_path / "runs" / "newer" / "config.json").write_text((trained_run / "config.json").read_text())
    from diffusion_keras import runs

    assert runs.newest_run() == os.path.join("runs", "good")


def test_resume_with_a_config_that_no_longer_matches_its_checkpoint_is_one_line(
        trained_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    saved["model"]["widths"] = [8, 32]
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert exit_code(train.main, ["--resume", str(run_dir), "--epochs", "3"]) == 2
    assert_one_line_error(capsys, "does not match its checkpoint (widths: config.json has [8, 32], "
                                  "checkpoint has [8, 16])")


def test_generate_checks_its_output_folder_before_sampling(trained_run, tmp_path, monkeypatch,
                                                           capsys):
    from diffusion_keras import runs

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    (tmp_path / "file.txt").write_text("a file")
    monkeypatch.setattr(runs, "load_checkpoint", never)
    assert exit_code(generate.main, ["--checkpoint", str(trained_run),
                                     "--output", str(tmp_path / "file.txt" / "out")]) == 2
    assert_one_line_error(capsys, "cannot write to output folder")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        assert exit_code(generate.main, ["--checkpoint", str(trained_run),
                                         "--output", str(tmp_path / "locked")]) == 2
        assert_one_line_error(capsys, "is not writable")


def test_checkpoint_may_be_a_run_folder(trained_run, tmp_path):
    from diffusion_keras import runs

    assert runs.find_checkpoint(str(trained_run)).endswith(os.path.join("checkpoints", "best.keras"))
    assert runs.find_checkpoint(str(trained_run / "checkpoints")).endswith("best.keras")
    bare = tmp_path / "bare"
    os.makedirs(bare / "checkpoints")
    for name in ("epoch_0001.keras", "epoch_0002.keras"):
        (bare / "checkpoints" / name).write_text("")
    assert runs.find_checkpoint(str(bare)).endswith("epoch_0002.keras")
    with pytest.raises(UsageError, match="holds no checkpoint"):
        runs.find_checkpoint(str(tmp_path / "bare" / "checkpoints" / ".." / ".."))
    assert generate.main(["--checkpoint", str(trained_run), "--steps", "2", "--num-images", "2",
                          "--output", str(tmp_path / "out"), "--quiet"]) == 0
    metadata = json.loads(
        (tmp_path / "out" / "samples_best_dpmpp2m_log_snr_steps2_seed0_n2.json").read_text())
    assert metadata["checkpoint"].endswith("best.keras")


def test_interpolation_strip_holds_every_frame_and_pictures_are_enlarged(trained_run, tmp_path):
    assert generate.main(["--checkpoint", str(trained_run), "--steps", "2", "--num-images", "4",
                          "--interpolate", "--frames", "8", "--output", str(tmp_path)]) == 0
    strip = Image.open(tmp_path / "interpolation_best_dpmpp2m_log_snr_steps2_seed0_frames8.png")
    width, height = strip.size
    assert width * 18 == height * (8 * 17 + 1), "one row of 8 frames of 16 pixels + 1 of padding"
    assert min(strip.size) >= 256 and min(Image.open(
        tmp_path / "samples_best_dpmpp2m_log_snr_steps2_seed0_n4.png").size) >= 256
    gif = Image.open(tmp_path / "interpolation_best_dpmpp2m_log_snr_steps2_seed0_frames8.gif")
    assert min(gif.size) >= 256


@pytest.mark.slow
def test_help_and_argument_errors_are_instant_and_quiet():
    """No Keras or TensorFlow is imported to answer --help or a bad flag, so nothing prints but
    argparse's own text, and a checkpoint error that does import them is still one line."""
    probe = ("import sys\n"
             "from diffusion_keras.cli import bench, evaluate, generate, train\n"
             "for cli in (bench, evaluate, generate, train): cli.parser().format_help()\n"
             "print(sorted(name for name in ('keras', 'tensorflow', 'jax', 'torch') "
             "if name in sys.modules))")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "[]" and result.stderr == ""
    result = subprocess.run([sys.executable, "generate.py", "--checkpoint", "missing.keras"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: checkpoint 'missing.keras' does not exist; pass the path of a .keras file saved by "
        "train.py"]


def test_tensorboard_gets_the_losses_and_the_sample_grids(trained_run):
    import tensorflow as tf

    def tags(folder):
        found = set()
        for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                found.update(value.tag for value in event.summary.value)
        return found

    logs = trained_run / "tensorboard"
    assert {"epoch_noise_loss", "epoch_learning_rate"} <= tags(logs / "train")
    assert "epoch_noise_loss" in tags(logs / "validation")
    assert "samples" in tags(logs / "samples")


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{missing}"], "does not exist"),
    (["--checkpoint", "{junk}"], "could not be loaded"),
    (["--steps", "0"], "--steps: must be a positive integer"),
    (["--num-images", "-1"], "--num-images: must be a positive integer"),
])
def test_generate_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "junk.keras").write_text("junk")
    values = {"missing": tmp_path / "missing.keras", "junk": tmp_path / "junk.keras"}
    argv = [arg.format(**values) for arg in argv]
    assert exit_code(generate.main, argv) == 2
    assert_one_line_error(capsys, message)


def test_help_lists_every_flag_with_its_default(capsys):
    for cli in (train, generate):
        with pytest.raises(SystemExit):
            cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--epochs", "--dataset", "--data-dir", "--image-size", "--batch-size", "--widths",
                 "--block-depth", "--learning-rate", "--weight-decay", "--ema", "--schedule",
                 "--plot-every", "--run-dir", "--seed", "--limit", "--checkpoint", "--steps",
                 "--num-images", "--interpolate", "--output"):
        assert flag in text
    assert "(default: 50)" in text


BLOCK_TENSORFLOW = NO_TENSORFLOW + """
from diffusion_keras.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_training_end_to_end_on_each_backend(backend, tiny_folder, tmp_path):
    """A fresh process per backend with TensorFlow imports blocked (`trained_run` is this
    process's backend: TensorFlow by default)."""
    pytest.importorskip(backend)
    program = ["-c", BLOCK_TENSORFLOW]
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, *program, "--data-dir", str(tiny_folder), "--epochs", "2",
         "--run-dir", str(tmp_path / "run"), "--plot-every", "2", *TINY_ARGS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log) == 2 and log[1]["loss"] < log[0]["loss"] * 1.05
    result = subprocess.run(
        [sys.executable, "generate.py", "--checkpoint",
         str(tmp_path / "run" / "checkpoints" / "epoch_0002.keras"), "--steps", "2",
         "--num-images", "2", "--output", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path / "out")


def test_train_leaves_the_plots_and_generate_the_interpolation_gif(trained_run, tmp_path):
    assert sorted(os.listdir(trained_run / "plots")) == [
        "forward_process.png", "losses.png", "nearest.png", "reverse_process.gif",
        "reverse_process_x0.png", "samples_untrained.png", "samples_untrained_vs_trained.png",
        "schedules.png"]
    assert generate.main(["--checkpoint", str(trained_run / "checkpoints" / "epoch_0002.keras"),
                          "--steps", "2", "--num-images", "2", "--interpolate", "--frames", "4",
                          "--output", str(tmp_path)]) == 0
    gif = tmp_path / "interpolation_epoch_0002_dpmpp2m_log_snr_steps2_seed0_frames4.gif"
    assert Image.open(gif).n_frames == 6  # and back


def test_generate_records_the_sampler_and_its_settings(trained_run, tmp_path):
    checkpoint = str(trained_run / "checkpoints" / "epoch_0002.keras")
    for argv in (["--sampler", "ddpm", "--variance", "beta"], ["--sampler", "heun"],
                 ["--sampler", "ddim", "--eta", "0.5", "--spacing", "karras"]):
        assert generate.main(["--checkpoint", checkpoint, "--steps", "3", "--num-images", "2",
                              "--output", str(tmp_path), *argv]) == 0
    ddpm = json.loads((tmp_path / "samples_epoch_0002_ddpm-beta_uniform_steps3_seed0_n2.json")
                      .read_text())
    assert ddpm["sampler"] == "ddpm" and ddpm["variance"] == "beta"
    heun = json.loads((tmp_path / "samples_epoch_0002_heun_karras_steps3_seed0_n2.json").read_text())
    assert heun["network_evaluations"] == 5
    ddim = json.loads((tmp_path / "samples_epoch_0002_ddim-eta0.5_karras_steps3_seed0_n2.json")
                      .read_text())
    assert ddim["eta"] == 0.5 and ddim["spacing"] == "karras"


def test_generate_rejects_eta_for_other_samplers(trained_run, capsys):
    checkpoint = str(trained_run / "checkpoints" / "epoch_0002.keras")
    assert exit_code(generate.main, ["--checkpoint", checkpoint, "--sampler", "ddpm",
                                     "--eta", "1"]) == 2
    assert_one_line_error(capsys, "--eta is a DDIM setting")


@pytest.mark.slow
def test_train_with_the_ddpm_formulation_and_its_architecture(tiny_folder, tmp_path):
    run_dir = tmp_path / "run"
    code = train.main(["--data-dir", str(tiny_folder), "--epochs", "1", "--run-dir", str(run_dir),
                       "--validation-split", "0", "--formulation", "ddpm", "--timesteps", "100",
                       "--prediction", "v", "--loss", "mse", "--attention-resolutions", "8",
                       "--norm", "group", "--embedding", "every", "--dropout", "0.1", *TINY_ARGS])
    assert code == 0
    from diffusion_keras.runs import load_checkpoint
    config = load_checkpoint(str(run_dir / "checkpoints" / "epoch_0001.keras")).get_config()
    assert config["formulation"] == "ddpm" and config["timesteps"] == 100
    assert config["schedule"] == "linear" and config["prediction"] == "v"
    assert config["attention_resolutions"] == [8] and config["norm"] == "group"


def test_a_folder_generated_into_again_holds_one_generation(trained_run, tmp_path, monkeypatch):
    """The same settings again (a newer best.keras, say) replace the earlier call's files whole:
    no stale numbered image stays, and the JSON lists exactly what this call wrote. An interrupted
    call leaves no JSON claiming its files and nothing staged."""
    from diffusion_keras import plotting

    argv = ["--checkpoint", str(trained_run), "--steps", "2", "--num-images", "3", "--individual",
            "--output", str(tmp_path), "--quiet"]
    name = "samples_best_dpmpp2m_log_snr_steps2_seed0_n3"
    assert generate.main(argv) == 0
    (tmp_path / name / "0007.png").write_text("stale, from an earlier run")
    assert generate.main(argv) == 0
    assert sorted(os.listdir(tmp_path / name)) == ["0000.png", "0001.png", "0002.png"]
    metadata = json.loads((tmp_path / f"{name}.json").read_text())
    assert metadata["individual_images"] == 3 and str(tmp_path / name) in metadata["files"]

    save_png = plotting.save_png
    calls = []

    def interrupted_after_two(picture, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save_png(picture, path)

    monkeypatch.setattr(plotting, "save_png", interrupted_after_two)
    assert generate.main(argv) == 130
    assert not (tmp_path / f"{name}.json").exists(), "no JSON claims a half-written generation"
    assert not [entry for entry in os.listdir(tmp_path) if ".tmp" in entry]


def test_every_setting_that_changes_the_images_is_in_the_names(trained_run, tmp_path):
    checkpoint = str(trained_run / "checkpoints" / "epoch_0002.keras")
    for argv in (["--eta", "0"], ["--eta", "1"], ["--spacing", "karras"]):
        assert generate.main(["--checkpoint", checkpoint, "--sampler", "ddim", "--steps", "2",
                              "--num-images", "2", "--output", str(tmp_path), "--quiet",
                              *argv]) == 0
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".png")) == [
        "samples_epoch_0002_ddim-eta0_karras_steps2_seed0_n2.png",
        "samples_epoch_0002_ddim-eta0_uniform_steps2_seed0_n2.png",
        "samples_epoch_0002_ddim-eta1_uniform_steps2_seed0_n2.png"]
    for path in tmp_path.glob("*.json"):
        assert json.loads(path.read_text())["files"] == [str(path)[:-len(".json")] + ".png"]


@pytest.mark.slow
def test_ctrl_c_while_generating_stops_at_the_next_batch_and_twice_at_once(trained_run, tmp_path):
    """Said at once, done between batches (a compiled sampling loop cannot stop halfway), and a
    second Ctrl-C ends the process at once; neither leaves a JSON claiming half the images."""
    import signal
    import time

    for presses in (1, 2):
        output, log = tmp_path / f"presses{presses}", tmp_path / f"presses{presses}.log"
        with open(log, "w") as stdout:
            process = subprocess.Popen(
                [sys.executable, "generate.py", "--checkpoint", str(trained_run), "--steps", "50",
                 "--num-images", "6000", "--batch-size", "2000", "--individual", "--output",
                 str(output)], cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while "/6000" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first batch is sampled
        started = time.monotonic()
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.3)
        err = process.communicate(timeout=120)[1]
        assert process.returncode == 130, err[-2000:]
        assert time.monotonic() - started < 20
        assert "stopping generating at the next batch" in err
        assert ("stopped at once" in err) == (presses == 2)
        assert "Traceback" not in err
        assert not glob.glob(str(output / "*.json"))
