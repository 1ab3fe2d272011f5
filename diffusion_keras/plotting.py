"""Pictures: image grids (PNG), plots and animations (GIF) of training and sampling, shown inline in
notebooks and saved atomically in the run folder."""

import json
import math
import os

import numpy as np
from PIL import Image

from diffusion_keras.runs import atomic_write

# grids and GIFs are enlarged (nearest neighbour, whole pixels) until their shorter side reaches this
MIN_PICTURE_SIDE = 256
# and shrunk by a whole factor until their longer side is at most this (a grid of 16 untrained
# 1000-pixel samples, pure noise that PNG cannot compress, was 48 MB)
MAX_PICTURE_SIDE = 2048


def image_grid(images, rows=None, cols=None, padding=1):
    """Tile (N, H, W, C) images in [0, 1] into one uint8 picture, row by row (every image shown:
    the side not given is computed from the other)."""
    images = np.asarray(images)
    count = len(images)
    if cols is None:
        cols = math.ceil(count / rows) if rows else math.ceil(math.sqrt(count))
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


def enlarged(picture, min_side=MIN_PICTURE_SIDE, max_side=MAX_PICTURE_SIDE):
    """A uint8 (H, W, C) picture scaled up by a whole factor (nearest neighbour: pixels stay
    sharp) until its shorter side reaches `min_side`, so a 16x16 sample is not a dot; or scaled
    down by a whole factor (averaging blocks) until its longer side is at most `max_side`."""
    if max(picture.shape[:2]) > max_side:
        factor = math.ceil(max(picture.shape[:2]) / max_side)
        height, width = (side // factor * factor for side in picture.shape[:2])
        blocks = picture[:height, :width].reshape(height // factor, factor, width // factor,
                                                  factor, -1)
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    factor = max(1, math.ceil(min_side / min(picture.shape[:2])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(picture, path):
    """Write a uint8 (H, W, C) picture as PNG, atomically, at its own size."""
    picture = picture[..., 0] if picture.shape[-1] == 1 else picture
    with atomic_write(path) as temporary:
        Image.fromarray(picture).save(temporary, format="PNG")
    return path


def save_image_grid(images, path, rows=None, cols=None):
    """Images in [0, 1] as one grid PNG, enlarged to be readable (`enlarged`)."""
    return save_png(enlarged(image_grid(images, rows, cols)), path)


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
            axis.imshow(image[..., 0], cmap=cmap or "gray", interpolation="nearest")
        else:
            axis.imshow(image, cmap=cmap, interpolation="nearest")
    figure.tight_layout()
    return _finish(figure, save_to)


def _finish(figure, save_to):
    """Save a figure atomically (format from the extension); show it in a notebook, or close it.

    Returns the figure, or None where it was shown inline: a notebook cell would otherwise display
    the returned figure a second time.
    """
    import matplotlib.pyplot as plt

    if save_to is not None:  # "tight": titles and labels that overhang the axes are kept whole
        with atomic_write(save_to) as temporary:
            figure.savefig(temporary, format=os.path.splitext(save_to)[1][1:], bbox_inches="tight")
    if plt.get_backend().lower().endswith("inline"):
        plt.show()
        return None
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
    columns = [key for key in dict.fromkeys(key for row in log for key in row)
               if key not in ("epoch", "learning_rate")]
    figure, axis = _figure(figsize=(6, 4))
    for column in columns:
        points = [(row["epoch"], row[column]) for row in log if column in row]
        axis.plot(*zip(*points), marker="o", label=column, linestyle="--" if "val_" in column else "-")
    axis.set_xlabel("epoch")
    axis.set_ylabel("log scale")
    validated = any(column.startswith("val_") for column in columns)
    axis.set_title("Losses per epoch: loss is the training objective; noise_ and image_loss the\n"
                   "mean absolute error of the predicted noise and image"
                   + ("; val_: held-out images, EMA network" if validated else ""),
                   fontsize="small")
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
    axis.set_ylabel("rate")
    axis.set_title("Diffusion schedules\nnoisy = signal rate x image + noise rate x noise")
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
    """A few images (rows): the clean original, then noised at 0/25/50/75/100% of the diffusion
    time (columns)."""
    frames = forward_process(images, schedule, times, seed)
    titles = ["original", *(f"t = {time:.2f}" for time in times)]
    return plot_image_table([np.asarray(images), *frames], titles,
                            "Forward process: noise added to training images", save_to)


def plot_image_table(columns, titles, title, save_to=None, size=1.6, row_titles=None):
    """Images in a labelled table: column k shows the images of `columns[k]` (N, H, W, C) in
    [0, 1], one per row, under `titles[k]`, row r named `row_titles[r]` if given; pixels drawn
    sharp (nearest neighbour). Cells keep the images' aspect (an image strip is a wide cell)."""
    rows = len(columns[0])
    height, width = np.shape(columns[0][0])[:2]
    figure, axes = _figure(rows, len(columns),
                           figsize=(size * width / height * len(columns), size * rows + 0.6),
                           squeeze=False)
    for column, (images, name) in enumerate(zip(columns, titles)):
        axes[0, column].set_title(name, fontsize="small")
        for row, image in enumerate(images):
            axes[row, column].imshow(image[..., 0] if image.shape[-1] == 1 else image,
                                     cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for axis in axes.flat:
        axis.axis("off")
    for axis, name in zip(axes[:, 0], row_titles or ()):
        axis.text(-0.05, 0.5, name, transform=axis.transAxes, ha="right", va="center",
                  fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return _finish(figure, save_to)


def plot_nearest_images(samples, training_images, check, save_to=None, rows=8, size=1.2):
    """Samples beside their nearest training images (`memorization.check`), the distance under
    each: the `rows` most copy-like samples (lowest nearest/second-nearest ratio) first, then the
    neighbours in pixels and, if the check has them, in features."""
    from diffusion_keras.data import preprocess

    order = np.argsort(check.ratios, kind="stable")[:rows]
    groups = [("pixels", check.pixels)] + ([("features", check.features)]
                                           if check.features is not None else [])
    columns = 1 + sum(neighbours.indices.shape[1] for _, neighbours in groups)
    figure, axes = _figure(len(order), columns, figsize=(size * columns, size * len(order) + 0.8),
                           squeeze=False)
    for row, sample in enumerate(order):
        cells = [(preprocess(samples[sample:sample + 1])[0],
                  f"ratio {check.ratios[sample]:.2f}" + (" COPY" if check.copies[sample] else ""))]
        for name, neighbours in groups:
            for rank, (index, distance) in enumerate(zip(neighbours.indices[sample],
                                                         neighbours.distances[sample])):
                cells.append((preprocess(training_images[index:index + 1])[0],
                              f"{name[0]}{rank + 1}: {distance:.3f}"))
        for axis, (image, label) in zip(axes[row], cells):
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0.0,
                        vmax=1.0, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(label, fontsize="x-small")
    axes[0, 0].set_title("sample", fontsize="small")
    if columns > 1:
        axes[0, 1].set_title("nearest training images (p: pixels, f: features)", fontsize="small",
                             loc="left")
    from diffusion_keras.memorization import RULE

    summary = check.describe().replace(f" ({RULE})", f"\n({RULE})")
    figure.suptitle(f"memorisation check: {summary}", fontsize="small")
    figure.tight_layout()
    return _finish(figure, save_to)


def reverse_process(model, num_images=16, diffusion_steps=20, seed=0, **sampling):
    """Record sampling step by step with the EMA network and any sampler (`sampling`: `generate`'s
    sampler, spacing and options): (noisy_frames, pred_frames, times); the frames are each
    (steps, N, H, W, C) in [0, 1]: frame k is the state at grid time `times[k]` and its clean
    estimate; the last estimate is the sample `generate` returns."""
    from diffusion_keras.distributed import to_numpy  # a multi-host batch spans every process

    noisy_frames, pred_frames, times = [], [], []

    def record(step, time, noisy_images, pred_images):
        noisy_frames.append(to_numpy(model.denormalize(noisy_images)))
        pred_frames.append(to_numpy(model.denormalize(pred_images)))
        times.append(time)

    model.generate(num_images, diffusion_steps, seed=seed, batch_size=num_images, callback=record,
                   verbose=False, **sampling)
    return np.stack(noisy_frames), np.stack(pred_frames), np.array(times)


def save_gif(pictures, path, duration=120, final_hold=1000):
    """uint8 (H, W, C) pictures as a looping animated GIF, written atomically, enlarged to be
    readable (`enlarged`); the last is held."""
    pictures = [enlarged(picture) for picture in pictures]
    frames = [Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
              for picture in pictures]
    durations = [duration] * (len(frames) - 1) + [final_hold]
    with atomic_write(path) as temporary:
        frames[0].save(temporary, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)
    return path


def save_reverse_process(frames, folder, num_columns=8):
    """`reverse_process.gif` (the grid denoised step by step, then the final images) and
    `reverse_process_x0.png` (rows: a few images; columns: the clean-image estimate along the steps,
    labelled with their times), from `reverse_process`'s frames."""
    noisy_frames, pred_frames, times = frames
    pictures = [image_grid(frame) for frame in noisy_frames] + [image_grid(pred_frames[-1])]
    gif = save_gif(pictures, os.path.join(folder, "reverse_process.gif"))
    steps = len(pred_frames)  # the DDPM grid may merge steps that round to one timestep
    columns = np.unique(np.linspace(0, steps - 1, min(num_columns, steps)).round()).astype(int)
    rows = min(pred_frames.shape[1], 4)
    png = os.path.join(folder, "reverse_process_x0.png")
    plot_image_table([pred_frames[column, :rows] for column in columns],
                     [f"t = {times[column]:.2f}" for column in columns],
                     "Clean-image estimate along the reverse process", png)
    return gif, png


def plot_before_after(untrained_images, trained_images, save_to=None, titles=("untrained", "trained")):
    """Samples from the same noises before and after training, side by side."""
    figure, axes = _figure(1, 2, figsize=(8, 4.4))
    for axis, images, title in zip(axes, (untrained_images, trained_images), titles):
        grid = image_grid(images)
        axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray",
                    interpolation="nearest")
        axis.set_title(title)
        axis.axis("off")
    figure.suptitle("Samples from the same noises")
    figure.tight_layout()
    return _finish(figure, save_to)
