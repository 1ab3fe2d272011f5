"""Pictures: image grids (PNG), plots and animations (GIF) of training and sampling, shown inline in
notebooks and saved atomically in the run folder."""

import json
import math
import os

import numpy as np
from PIL import Image

from diffusion_keras.runs import atomic_write


def image_grid(images, rows=None, cols=None, padding=1):
    """Tile (N, H, W, C) images in [0, 1] into one uint8 picture, row by row."""
    images = np.asarray(images)
    count = len(images)
    cols = cols or math.ceil(math.sqrt(count))
    rows = rows or math.ceil(count / cols)
    height, width, channels = images.shape[1:]
    grid = np.ones(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels),
        dtype=np.uint8,
    ) * 255
    for index, image in enumerate(images[: rows * cols]):
        top = padding + (index // cols) * (height + padding)
        left = padding + (index % cols) * (width + padding)
        grid[top:top + height, left:left + width] = np.round(np.clip(image, 0, 1) * 255)
    return grid


def save_png(picture, path):
    """Write a uint8 (H, W, C) picture as PNG, atomically."""
    picture = picture[..., 0] if picture.shape[-1] == 1 else picture
    with atomic_write(path) as temporary:
        Image.fromarray(picture).save(temporary, format="PNG")
    return path


def save_image_grid(images, path, rows=None, cols=None):
    return save_png(image_grid(images, rows, cols), path)


def display(images, n=None, size=2.0, cmap=None, as_type=None, save_to=None, cols=None):
    """Show the first `n` images in a matplotlib grid (inline in a notebook); optionally save it.

    `as_type` casts the pixels first (for example "uint8" for 0-255 data); single-channel images
    are drawn with `cmap` (gray by default).
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)[:n]
    if as_type is not None:
        images = images.astype(as_type)
    cols = cols or min(len(images), 8)
    rows = math.ceil(len(images) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        if image.ndim == 3 and image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap=cmap or "gray")
        else:
            axis.imshow(image, cmap=cmap)
    figure.tight_layout()
    return _finish(figure, save_to)


def _finish(figure, save_to):
    """Save a figure atomically (format from the extension), show it inline in a notebook, or close it."""
    import matplotlib.pyplot as plt

    if save_to is not None:
        with atomic_write(save_to) as temporary:
            figure.savefig(temporary, format=os.path.splitext(save_to)[1][1:])
    if plt.get_backend().lower().endswith("inline"):
        plt.show()
    else:
        plt.close(figure)
    return figure


def _figure(*args, **kwargs):
    """A pyplot figure (matplotlib falls back to Agg where there is no display)."""
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def plot_losses(log, save_to=None):
    """Loss curves per epoch from the training log (rows as in `log.json`, or its path)."""
    if isinstance(log, str):
        with open(log) as file:
            log = json.load(file)
    # "loss" and "val_loss" repeat the noise loss under Keras' generic name
    columns = [key for key in dict.fromkeys(key for row in log for key in row)
               if key not in ("epoch", "loss", "val_loss")]
    figure, axis = _figure(figsize=(6, 4))
    for column in columns:
        points = [(row["epoch"], row[column]) for row in log if column in row]
        axis.plot(*zip(*points), marker="o", label=column, linestyle="--" if "val_" in column else "-")
    axis.set_xlabel("epoch")
    axis.set_yscale("log")  # image losses are several times the noise losses
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _finish(figure, save_to)


def plot_schedules(save_to=None, num_points=201):
    """Signal and noise rates against diffusion time for every registered schedule."""
    from diffusion_keras.schedules import SCHEDULES

    times = np.linspace(0.0, 1.0, num_points, dtype="float32")
    figure, axis = _figure(figsize=(6, 4))
    for (name, schedule), colour in zip(SCHEDULES.items(), ("C0", "C1", "C2", "C3")):
        noise_rates, signal_rates = (np.asarray(rates) for rates in schedule(times))
        axis.plot(times, signal_rates, color=colour, label=f"{name} signal rate")
        axis.plot(times, noise_rates, color=colour, linestyle="--", label=f"{name} noise rate")
    axis.set_xlabel("diffusion time")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _finish(figure, save_to)


def forward_process(images, schedule, times=(0.0, 0.25, 0.5, 0.75, 1.0), seed=0):
    """Images noised at each diffusion time, (len(times), N, H, W, C) in [0, 1].

    Pixels are mapped to [-1, 1] (roughly the model's normalised space) before mixing in the noise.
    """
    images = np.asarray(images, dtype="float32") * 2.0 - 1.0
    noises = np.random.default_rng(seed).standard_normal(images.shape).astype("float32")
    frames = []
    for time in times:
        noise_rates, signal_rates = schedule(np.full((len(images), 1, 1, 1), time, dtype="float32"))
        noisy_images = np.asarray(signal_rates) * images + np.asarray(noise_rates) * noises
        frames.append(np.clip((noisy_images + 1.0) / 2.0, 0.0, 1.0))
    return np.stack(frames)


def plot_forward_process(images, schedule, times=(0.0, 0.25, 0.5, 0.75, 1.0), seed=0, save_to=None):
    """A few images (rows) at 0/25/50/75/100% of the diffusion time (columns)."""
    frames = forward_process(images, schedule, times, seed)
    figure, axes = _figure(len(images), len(times), figsize=(1.6 * len(times), 1.6 * len(images)),
                           squeeze=False)
    for column, (time, noisy_images) in enumerate(zip(times, frames)):
        axes[0, column].set_title(f"t = {time:.0%}")
        for row, image in enumerate(noisy_images):
            axes[row, column].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    return _finish(figure, save_to)


def reverse_process(model, num_images=16, diffusion_steps=20, seed=0):
    """Record DDIM step by step with the EMA network: (noisy_frames, pred_frames), each
    (diffusion_steps, N, H, W, C) in [0, 1]; frame k is before step k+1 and its x0 prediction."""
    from keras import ops

    from diffusion_keras.samplers import ddim_step

    noisy_images = model.initial_noise(num_images, seed=seed)
    times = model.sampling_times(diffusion_steps)  # the grid `generate` uses (DDPM: integer steps)
    ones = ops.ones((num_images, 1, 1, 1))
    noisy_frames, pred_frames = [], []
    for time, next_time in zip(times[:-1], times[1:]):
        next_noisy_images, pred_images = ddim_step(model.denoise, model.diffusion_schedule,
                                                   noisy_images, ones * time, ones * next_time)
        noisy_frames.append(ops.convert_to_numpy(model.denormalize(noisy_images)))
        pred_frames.append(ops.convert_to_numpy(model.denormalize(pred_images)))
        noisy_images = next_noisy_images
    return np.stack(noisy_frames), np.stack(pred_frames)


def save_gif(pictures, path, duration=120, final_hold=1000):
    """uint8 (H, W, C) pictures as a looping animated GIF, written atomically; the last is held."""
    frames = [Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
              for picture in pictures]
    durations = [duration] * (len(frames) - 1) + [final_hold]
    with atomic_write(path) as temporary:
        frames[0].save(temporary, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)
    return path


def save_reverse_process(model, folder, num_images=16, diffusion_steps=20, seed=0, num_columns=8):
    """`reverse_process.gif` (the grid denoised step by step, then the final images) and
    `reverse_process_x0.png` (rows: a few images; columns: the x0 prediction along the steps)."""
    noisy_frames, pred_frames = reverse_process(model, num_images, diffusion_steps, seed)
    pictures = [image_grid(frame) for frame in noisy_frames] + [image_grid(pred_frames[-1])]
    gif = save_gif(pictures, os.path.join(folder, "reverse_process.gif"))
    steps = len(pred_frames)  # the DDPM grid may merge steps that round to one timestep
    columns = np.unique(np.linspace(0, steps - 1, min(num_columns, steps)).round()).astype(int)
    rows = min(num_images, 4)
    sequence = pred_frames[columns, :rows].transpose(1, 0, 2, 3, 4).reshape(-1, *pred_frames.shape[2:])
    png = save_image_grid(sequence, os.path.join(folder, "reverse_process_x0.png"), rows, len(columns))
    return gif, png


def plot_before_after(untrained_images, trained_images, save_to=None, titles=("untrained", "trained")):
    """Samples from the same noises before and after training, side by side."""
    figure, axes = _figure(1, 2, figsize=(8, 4.4))
    for axis, images, title in zip(axes, (untrained_images, trained_images), titles):
        grid = image_grid(images)
        axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    return _finish(figure, save_to)
