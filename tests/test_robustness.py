"""Faults a long run meets: bad files in the data, a diverging loss, an unwritable run folder, a
crash in the middle of writing a file."""

import errno
import io
import json
import logging
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

from diffusion_keras import runs, training
from diffusion_keras.callbacks import Diverged
from diffusion_keras.cli import train
from diffusion_keras.config import ModelConfig, OptimizationConfig, RunConfig, TrainingConfig
from diffusion_keras.data import load_image_folder
from tests.conftest import TINY

CLI_SETTINGS = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--batch-size", "4"]


def image_bytes(image, format):
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


def write_mixed_folder(folder):
    """Good images in every odd mode and shape Pillow reads, beside files no one can train on.

    Returns (number of good files, number of bad files)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    sixteen_bit = Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16))
    good = {
        "rgb.png": image_bytes(rgb, "PNG"),
        "rgb.jpg": image_bytes(rgb, "JPEG"),
        "cmyk.jpg": image_bytes(rgb.convert("CMYK"), "JPEG"),
        "palette.gif": image_bytes(rgb.convert("P"), "GIF"),
        "gray_alpha.png": image_bytes(rgb.convert("LA"), "PNG"),
        "rgba.png": image_bytes(rgb.convert("RGBA"), "PNG"),
        "sixteen_bit.png": image_bytes(sixteen_bit, "PNG"),
        "one_bit.bmp": image_bytes(rgb.convert("1"), "BMP"),
        "wide.png": image_bytes(rgb.resize((240, 8)), "PNG"),  # 8 px >= 16 / 4: still usable
        "upper_case.PNG": image_bytes(rgb, "PNG"),
    }
    jpeg = good["rgb.jpg"]
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": good["rgb.png"][:100],
        "random_bytes.png": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "text.gif": b"<html>not an image</html>",
        "png_header_only.png": b"\x89PNG\r\n\x1a\n",
        "one_pixel.png": image_bytes(Image.new("RGB", (1, 1)), "PNG"),
        "sliver.png": image_bytes(rgb.resize((300, 2)), "PNG"),  # 2 px: would be blown up 8x
    }
    for index, (name, content) in enumerate({**good, **bad}.items()):
        sub = folder / ("a" if index % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / name).write_bytes(content)
    (folder / "notes.txt").write_text("not an image extension: not counted")
    return len(good), len(bad)


@pytest.mark.slow
def test_mixed_folder_trains_on_exactly_the_good_files(tmp_path, caplog, capsys):
    good, bad = write_mixed_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="diffusion_keras"):
        images = load_image_folder(str(tmp_path / "data"), 16)
    assert images.shape == (good, 16, 16, 3) and np.isfinite(images).all()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert f"skipped {bad} image file(s) of {good + bad}" in warnings[0]
    assert "6 unreadable, 2 under 4 pixels on a side (e.g. " in warnings[0]

    run_dir = tmp_path / "run"
    code = train.main(["--data-dir", str(tmp_path / "data"), "--run-dir", str(run_dir),
                       "--epochs", "1", "--clip-norm", "1.0", *CLI_SETTINGS])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run_dir / "config.json").read_text())["metadata"]["num_images"] == good
    assert [row["epoch"] for row in json.loads((run_dir / "log.json").read_text())] == [1]
    checkpoint = runs.load_checkpoint(runs.checkpoint_path(run_dir, 1), compile=True)
    assert checkpoint.optimizer.global_clipnorm == 1.0  # so a resumed run clips as well


def test_sixteen_bit_images_keep_their_brightness(tmp_path):
    levels = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "ramp.png")
    images = load_image_folder(str(tmp_path), 16)
    assert images.shape == (1, 16, 16, 1)
    assert abs(float(images.mean()) / 255 - 0.5) < 0.02  # not clipped to white


class PoisonWeights(keras.callbacks.Callback):
    """At the start of epoch 2 a weight becomes NaN, as after an exploding step."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            kernel = self.model.network.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_last_good_checkpoint_kept(tiny_images, tmp_path):
    run_dir = runs.prepare_run_dir(str(tmp_path / "run"))
    with pytest.raises(Diverged) as error:
        settings = TrainingConfig(ModelConfig(widths=TINY["widths"], block_depth=1),
                                  OptimizationConfig(epochs=3, batch_size=16),
                                  RunConfig(validation_split=0.0))
        training.train(tiny_images, run_dir, settings, verbose=0, callbacks=[PoisonWeights()])
    message = str(error.value)
    assert "training diverged (" in message and "nan" in message
    assert "at epoch 2, step 1" in message
    assert "epoch_0001.keras', is kept" in message and "--clip-norm" in message
    assert sorted(os.listdir(os.path.join(run_dir, runs.CHECKPOINT_DIR))) == [
        "best.keras", "epoch_0001.keras"]
    with open(os.path.join(run_dir, "log.json")) as file:
        assert [row["epoch"] for row in json.load(file)] == [1]
    assert os.listdir(os.path.join(run_dir, runs.SAMPLES_DIR)) == ["epoch_0001.png"]
    kept = runs.load_checkpoint(runs.checkpoint_path(run_dir, 1))
    assert all(np.isfinite(np.asarray(weight)).all() for weight in kept.weights)


class ExplodeEMA(keras.callbacks.Callback):
    """At the end of epoch 2 the EMA network's kernels are huge but finite: the loss (of the online
    network) stays finite, the weights stay finite, and only its samples show it."""

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == self.params["steps"] - 1:
            for weight in self.model.ema_network.weights:
                if len(weight.shape) == 4:
                    weight.assign(np.asarray(weight) * 1e18)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


@pytest.mark.slow
@pytest.mark.parametrize("explosion, what", [
    ("weights", "loss="), ("ema", "the EMA network samples non-finite images")])
def test_a_finite_but_diverged_run_stops_before_saving_it(explosion, what, tiny_images, tmp_path):
    """A loss of 1e20 or an EMA network whose samples overflow is as diverged as a NaN: the
    epoch is not saved, and the kept checkpoint samples finite images."""
    class ExplodeWeights(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                for weight in self.model.network.trainable_weights:
                    if len(weight.shape) == 4:
                        weight.assign(np.asarray(weight) * 1e12)

    run_dir = str(tmp_path / "run")
    settings = TrainingConfig(ModelConfig(widths=TINY["widths"], block_depth=1),
                              OptimizationConfig(epochs=3, batch_size=16),
                              RunConfig(validation_split=0.0))
    with pytest.raises(Diverged) as error:
        training.train(tiny_images, run_dir, settings, verbose=0,
                       callbacks=[ExplodeWeights() if explosion == "weights" else ExplodeEMA()])
    assert what in str(error.value) and "epoch_0001.keras', is kept" in str(error.value)
    assert sorted(os.listdir(os.path.join(run_dir, runs.CHECKPOINT_DIR))) == [
        "best.keras", "epoch_0001.keras"]
    assert os.listdir(os.path.join(run_dir, runs.SAMPLES_DIR)) == ["epoch_0001.png"]
    kept = runs.load_checkpoint(runs.checkpoint_path(run_dir, 1))
    assert np.isfinite(kept.generate(2, 3, seed=0, verbose=False)).all()


@pytest.mark.slow
def test_generating_from_a_diverged_checkpoint_is_one_line(tiny_images, tmp_path, capsys):
    from diffusion_keras import DiffusionModel
    from diffusion_keras.cli import generate

    model = DiffusionModel(image_size=16, channels=3, seed=0, **{
        key: value for key, value in TINY.items() if key != "image_size"})
    model.normalizer.adapt(tiny_images)
    kernel = model.ema_network.weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    model.save(tmp_path / "diverged.keras")
    assert generate.main(["--checkpoint", str(tmp_path / "diverged.keras"), "--steps", "2",
                          "--num-images", "2", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == ["error: the model sampled non-finite values (NaN or infinity): "
                                  "its weights have diverged; use an earlier checkpoint"]
    assert not (tmp_path / "out").exists()


def test_unwritable_run_folder_fails_before_the_data_is_read(tmp_path, capsys):
    """A path under a regular file cannot be created, even by root."""
    (tmp_path / "file").write_text("a file, not a folder")
    code = train.main(["--data-dir", str(tmp_path / "missing"), "--run-dir",
                       str(tmp_path / "file" / "run"), *CLI_SETTINGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write to run folder" in err and "choose another --run-dir" in err
    assert "does not exist" not in err  # the data folder was never looked at


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_saved_epochs_and_says_how_to_resume(
        tiny_folder, tmp_path, monkeypatch, capsys):
    save = keras.Model.save

    def save_until_disk_full(model, path, *args, **kwargs):
        if "epoch_0002" in os.path.basename(path):
            with open(path, "wb") as file:
                file.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_disk_full)
    run_dir = tmp_path / "run"
    code = train.main(["--data-dir", str(tiny_folder), "--run-dir", str(run_dir), "--epochs", "3",
                       *CLI_SETTINGS])
    assert code == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert f"epochs up to 1 are saved in {run_dir}; resume with: " in err
    assert re.search(r"resume with: \S*python\S* train.py --resume", err), "the venv's python"
    assert sorted(os.listdir(run_dir / runs.CHECKPOINT_DIR)) == ["best.keras", "epoch_0001.keras"]
    assert [row["epoch"] for row in runs.resume_point(str(run_dir)).history] == [1]


def test_a_crash_while_writing_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "log.json"
    runs.write_json(str(path), [{"epoch": 1}])
    with pytest.raises(RuntimeError):
        with runs.atomic_write(str(path)) as temporary:
            with open(temporary, "w") as file:
                file.write('[{"epoch": 1}, {"epo')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == [{"epoch": 1}]
    assert os.listdir(tmp_path) == ["log.json"]  # no temporary left behind


def test_a_checkpoint_holding_code_is_refused_by_name(tmp_path):
    inputs = keras.Input((2,))
    crafted = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    crafted.save(tmp_path / "crafted.keras")
    with pytest.raises(runs.UsageError, match="holds code .* Keras' safe mode will not run"):
        runs.load_checkpoint(str(tmp_path / "crafted.keras"))
