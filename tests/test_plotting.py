"""Plots and animations: each is written as a file and shows what it claims to."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from diffusion_keras import plotting
from diffusion_keras.samplers import SAMPLERS
from diffusion_keras.schedules import SCHEDULES, get_schedule

LOG = [{"epoch": 1, "loss": 0.8, "noise_loss": 0.8, "image_loss": 2.0, "val_loss": 0.9,
        "val_noise_loss": 0.9, "val_image_loss": 2.1},
       {"epoch": 2, "loss": 0.6, "noise_loss": 0.6, "image_loss": 1.5, "val_loss": 0.7,
        "val_noise_loss": 0.7, "val_image_loss": 1.6}]


def test_loss_curves_from_log_json_plot_each_loss_once(tmp_path):
    log = tmp_path / "log.json"
    log.write_text(json.dumps(LOG))
    figure = plotting.plot_losses(str(log), save_to=str(tmp_path / "losses.png"))
    labels = sorted(line.get_label() for line in figure.axes[0].get_lines())
    assert labels == ["image_loss", "loss", "noise_loss", "val_image_loss", "val_loss",
                      "val_noise_loss"]
    axis = figure.axes[0]
    assert axis.get_xlabel() == "epoch" and "held-out images" in axis.get_title()
    without_validation = [{key: value for key, value in row.items() if not key.startswith("val_")}
                          for row in LOG]
    figure = plotting.plot_losses(without_validation)
    assert "held-out" not in figure.axes[0].get_title()
    assert Image.open(tmp_path / "losses.png").format == "PNG"


def test_schedule_plot_draws_signal_and_noise_rates_of_every_schedule(tmp_path):
    figure = plotting.plot_schedules(save_to=str(tmp_path / "schedules.png"))
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 * len(SCHEDULES)
    for signal, noise in zip(lines[::2], lines[1::2]):
        np.testing.assert_allclose(signal.get_ydata() ** 2 + noise.get_ydata() ** 2, 1.0, atol=1e-5)
    assert (tmp_path / "schedules.png").stat().st_size > 0


def test_forward_process_goes_from_the_images_to_noise(tiny_images, tmp_path):
    images = tiny_images[:3]
    frames = plotting.forward_process(images, get_schedule("linear"), times=(0.0, 1.0))
    assert frames.shape == (2, *images.shape)
    np.testing.assert_allclose(frames[0], images, atol=1e-6)  # linear: signal rate 1 at t = 0
    assert np.corrcoef(frames[1].ravel(), images.ravel())[0, 1] < 0.1
    figure = plotting.plot_forward_process(images, get_schedule("offset_cosine"),
                                           save_to=str(tmp_path / "forward.png"))
    assert (tmp_path / "forward.png").exists()
    # the clean original comes first: offset-cosine's t = 0 is already noisy
    titles = [axis.get_title() for axis in figure.axes[:6]]
    assert titles == ["original", "t = 0.00", "t = 0.25", "t = 0.50", "t = 0.75", "t = 1.00"]
    np.testing.assert_allclose(figure.axes[0].get_images()[0].get_array(), images[0], atol=1e-6)


def test_reverse_process_ends_where_the_compiled_sampler_ends(trained_model):
    noisy_frames, pred_frames, times = plotting.reverse_process(trained_model, 3, diffusion_steps=4,
                                                                seed=5)
    assert noisy_frames.shape == pred_frames.shape == (4, 3, 16, 16, 3)
    np.testing.assert_allclose(times, trained_model.sampling_times(4, SAMPLERS["dpmpp2m"].default_spacing))
    np.testing.assert_allclose(pred_frames[-1], trained_model.generate(3, 4, seed=5), atol=1e-4)
    noise = trained_model.denormalize(trained_model.initial_noise(3, seed=5))
    np.testing.assert_allclose(noisy_frames[0], keras.ops.convert_to_numpy(noise), atol=1e-6)


@pytest.mark.parametrize("sampling", [{}, {"sampler": "heun"}, {"sampler": "ddpm"}])
def test_reverse_process_gif_has_one_frame_per_step_plus_the_result(trained_model, tmp_path,
                                                                    sampling):
    frames = plotting.reverse_process(trained_model, 4, diffusion_steps=5, **sampling)
    gif, png = plotting.save_reverse_process(frames, str(tmp_path), num_columns=3)
    animation = Image.open(gif)
    assert animation.n_frames == 6 and animation.info["loop"] == 0
    assert min(animation.size) >= plotting.MIN_PICTURE_SIDE  # 16-pixel images are not a dot
    # x0 sequence: one row per image, one labelled column per shown step
    figure = plotting.plot_image_table([np.zeros((4, 16, 16, 3))] * 3, ["a", "b", "c"], "x0")
    assert len(figure.axes) == 12 and figure.axes[1].get_title() == "b"
    assert min(Image.open(png).size) >= 300


def test_before_after_plot_shows_both_grids(tmp_path):
    rng = np.random.default_rng(0)
    figure = plotting.plot_before_after(rng.random((4, 8, 8, 3)), rng.random((4, 8, 8, 3)),
                                        save_to=str(tmp_path / "before_after.png"))
    assert [axis.get_title() for axis in figure.axes] == ["untrained", "trained"]
    assert (tmp_path / "before_after.png").exists()


def test_a_notebook_shows_each_figure_once(monkeypatch):
    """In a notebook the figure is shown by plt.show(); returning it too would show it again."""
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    monkeypatch.setattr(plt, "show", lambda: shown.append(1))
    assert plotting.display(np.zeros((2, 4, 4, 3))) is None
    assert shown == [1]


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_frames_loop_and_keep_their_pixels(channels, tmp_path):
    pictures = [np.full((4, 5, channels), value, dtype=np.uint8) for value in (0, 128, 255)]
    path = plotting.save_gif(pictures, str(tmp_path / "a.gif"))
    animation = Image.open(path)
    assert animation.n_frames == 3 and animation.size == (5 * 64, 4 * 64)  # enlarged, whole pixels
    animation.seek(1)
    assert np.asarray(animation.convert("L"))[0, 0] == 128
