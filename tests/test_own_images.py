"""Small folders: the augmentation pipe, the memorisation check, post-hoc EMA, FD during training
and fine-tuning, on tiny data; the parts inside the compiled step on every backend (slow)."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from diffusion_keras import augmentation, fine_tuning, memorization, posthoc_ema, runs, training
from diffusion_keras.cli import evaluate as evaluate_cli
from diffusion_keras.cli import generate as generate_cli
from diffusion_keras.cli import train as train_cli
from diffusion_keras.config import ModelConfig, OptimizationConfig, RunConfig, TrainingConfig
from diffusion_keras.errors import UsageError
from diffusion_keras.model import DiffusionModel
from tests.conftest import TINY, run_on_backend

SIDE = 8


def labels_of(flip=0, turns=0, shift_x=0, shift_y=0, log_scale=0.0, log_aniso=0.0):
    """The augmentation labels of one transform (shifts in pixels of a SIDE-pixel image)."""
    return np.array([[flip, augmentation.QUARTER_COS[turns] - 1, augmentation.QUARTER_SIN[turns],
                      shift_x / SIDE, shift_y / SIDE, log_scale, log_aniso]], "float32")


def known_image():
    return np.random.default_rng(0).random((1, SIDE, SIDE, 3)).astype("float32")


def warped(image, **transform):
    return ops.convert_to_numpy(augmentation.warp(image, labels_of(**transform)))


def check_warps_are_exact():
    """Flips, quarter turns and integer shifts move whole pixels: exactly NumPy's."""
    image = known_image()
    np.testing.assert_array_equal(warped(image), image)
    np.testing.assert_array_equal(warped(image, flip=1), image[:, :, ::-1])
    for turns in range(4):
        np.testing.assert_array_equal(warped(image, turns=turns),
                                      np.rot90(image, -turns, axes=(1, 2)))
    shifted = warped(image, shift_x=2, shift_y=-1)
    np.testing.assert_array_equal(shifted[:, :-1, 2:], image[:, 1:, :-2])
    np.testing.assert_array_equal(shifted[:, :-1, :2], image[:, 1:, 1::-1])  # reflected border
    scaled = warped(image, log_scale=1.0)  # twice as large: the centre pixels spread out
    assert not np.allclose(scaled, image) and 0 <= scaled.min() and scaled.max() <= 1


def test_the_pipes_transforms_are_exact_on_a_known_image():
    check_warps_are_exact()


def test_each_transform_is_drawn_for_its_share_and_labels_say_which():
    images = np.repeat(known_image(), 2000, axis=0)
    seed = keras.random.SeedGenerator(1)
    untouched, labels = augmentation.augment(images, 0.0, seed)
    np.testing.assert_array_equal(ops.convert_to_numpy(untouched), images)
    assert not np.any(ops.convert_to_numpy(labels))
    augmented, labels = (ops.convert_to_numpy(value) for value in
                         augmentation.augment(images, 0.5, seed))
    assert labels.shape == (2000, augmentation.AUGMENT_LABELS)
    share = (labels != 0).mean(axis=0)
    assert 0.2 < share[0] < 0.3  # flipped: chosen (1/2) and drawn 1 (1/2)
    assert 0.4 < share[5] < 0.6 and 0.4 < share[6] < 0.6  # the scalings: chosen half the time
    identity = np.all(labels == 0, axis=1)
    np.testing.assert_array_equal(augmented[identity], images[identity])
    for row in np.where(~identity)[0][:20]:  # each image is what its labels describe
        np.testing.assert_allclose(augmented[row], ops.convert_to_numpy(
            augmentation.warp(images[row:row + 1], labels[row:row + 1]))[0], atol=1e-6)


def test_sampling_passes_zero_augmentation_labels():
    model = DiffusionModel(ModelConfig(**TINY, augment=0.3))
    assert [tensor.name for tensor in model.network.inputs][-1] == "augment_labels"
    noisy = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(3, 16, 16, 3)), "float32")
    rates = ops.convert_to_tensor(np.full((3, 1, 1, 1), 0.6), "float32")
    rng = np.random.default_rng(0)  # as if trained (the zero-initialised layers too): labels matter
    for weight in model.ema_network.weights:
        weight.assign(rng.random(weight.shape).astype("float32") * 0.1)
    default = ops.convert_to_numpy(model.denoise(noisy, rates, rates)[1])
    zeros = ops.convert_to_numpy(model.denoise(noisy, rates, rates,
                                               augment_labels=np.zeros((3, 7), "float32"))[1])
    flipped = ops.convert_to_numpy(model.denoise(noisy, rates, rates,
                                                 augment_labels=np.ones((3, 7), "float32"))[1])
    np.testing.assert_array_equal(default, zeros)
    assert not np.allclose(default, flipped)


def test_augment_probability_is_checked_in_one_line():
    with pytest.raises(UsageError, match="augment probability"):
        ModelConfig(augment=1.5)


def test_the_nearest_neighbour_search_finds_every_planted_copy():
    rng = np.random.default_rng(0)
    training_images = rng.integers(0, 256, (300, SIDE, SIDE, 3), dtype=np.uint8)
    samples = rng.integers(0, 256, (40, SIDE, SIDE, 3), dtype=np.uint8)
    planted, sources = [3, 7, 11, 20], [5, 100, 250, 299]
    for sample, source in zip(planted, sources):
        noise = rng.integers(-8, 9, (SIDE, SIDE, 3))
        samples[sample] = np.clip(training_images[source].astype(int) + noise, 0, 255)
    check = memorization.check(samples, training_images, k=3,
                               sample_features=samples.reshape(40, -1)[:, :40],
                               training_features=training_images.reshape(300, -1)[:, :40])
    assert np.where(check.copies)[0].tolist() == planted
    assert check.pixels.indices[planted, 0].tolist() == sources
    assert check.features.indices[planted, 0].tolist() == sources
    brute = np.sqrt(((samples.reshape(40, 1, -1) / 255.0
                      - training_images.reshape(1, 300, -1) / 255.0) ** 2).mean(axis=-1))
    np.testing.assert_allclose(check.pixels.distances, np.sort(brute, axis=1)[:, :3], atol=1e-5)
    assert check.summary()["near_copies"] == 4 and "4 of 40" in check.describe()
    assert "train with --augment 0.2" in memorization.advice(check.summary(), 0)
    assert "a higher --augment than 0.2" in memorization.advice(check.summary(), 0.2)
    without_copies = memorization.check(np.delete(samples, planted, axis=0), training_images)
    assert memorization.advice(without_copies.summary(), 0) is None
    with pytest.raises(UsageError, match="nearest"):
        memorization.nearest(samples, training_images[:2], 3)


def test_a_power_profile_has_the_relative_width_it_is_named_by():
    for width in (0.05, 0.1, 0.2):
        gamma = posthoc_ema.power(width)
        tau = np.linspace(0, 1, 200001)
        profile = (gamma + 1) * tau ** gamma
        mean = np.trapezoid(tau * profile, tau)
        assert abs(np.sqrt(np.trapezoid((tau - mean) ** 2 * profile, tau)) - width) < 1e-4
    with pytest.raises(UsageError, match="EMA length"):
        posthoc_ema.power(0.5)


def power_averages(values, gamma, times):
    """The power EMA of a sequence (one weight per update) at update counts `times`."""
    average, out = 0.0, {}
    for t, value in enumerate(values, start=1):
        average = posthoc_ema.momentum(t, gamma) * average + (1 - posthoc_ema.momentum(t, gamma)) \
            * value
        if t in times:
            out[t] = average
    return out


def test_snapshots_of_two_widths_rebuild_another_ema_length():
    """A weight that drifts and oscillates, averaged by the two kept profiles at 16 snapshots: the
    combination for width 0.15 is the directly computed power EMA of width 0.15, closely."""
    steps = np.arange(1, 4001)
    values = np.sin(steps / 300.0) + 0.001 * steps
    times = set(posthoc_ema.snapshot_epochs(4000, 16))
    kept = [power_averages(values, posthoc_ema.power(width), times) for width in (0.05, 0.1)]
    order = sorted(times)
    stacked_times = [t for t in order for _ in kept]
    gammas = [posthoc_ema.power(width) for _ in order for width in (0.05, 0.1)]
    snapshot_values = np.array([averages[t] for t in order for averages in kept])
    target = posthoc_ema.power(0.15)
    weights = posthoc_ema.coefficients(stacked_times, gammas, 4000, target)
    direct = power_averages(values, target, {4000})[4000]
    assert abs(weights @ snapshot_values - direct) < 0.01 * np.ptp(values)
    assert posthoc_ema.snapshot_epochs(10, 4) == [3, 5, 8, 10]


def test_fine_tuning_refuses_another_architecture_and_copies_the_ema_weights(tmp_path):
    source = DiffusionModel(ModelConfig(**TINY))
    source.ema_network.set_weights([np.random.default_rng(index).normal(size=weight.shape)
                                    for index, weight in enumerate(source.ema_network.weights)])
    path = runs.save_model(source, str(tmp_path / "source.keras"))
    with pytest.raises(UsageError, match=r"widths: the checkpoint has \(8, 16\), this run \(8, 32\)"):
        fine_tuning.check_architecture(ModelConfig(**{**TINY, "widths": (8, 32)}),
                                       runs.saved_model_config(path), path)
    fine_tuning.check_architecture(ModelConfig(**TINY, augment=0.2), source.config, path)
    model = DiffusionModel(ModelConfig(**TINY, augment=0.2))
    fine_tuning.initial_weights(model, path)
    for network in (model.network, model.ema_network):
        kept = [weight for weight in network.weights
                if augmentation.AUGMENT_EMBEDDING not in weight.path]
        for weight, expected in zip(kept, source.ema_network.weights, strict=True):
            np.testing.assert_array_equal(ops.convert_to_numpy(weight),
                                          ops.convert_to_numpy(expected))


def test_cli_rebuilds_an_ema_checks_memorisation_and_refuses_in_one_line(tiny_folder, tmp_path,
                                                                          capsys):
    trained = str(tmp_path / "trained")
    code = train_cli.main(["--data-dir", str(tiny_folder), "--image-size", "16", "--widths",
                           "8,16", "--block-depth", "1", "--batch-size", "8", "--epochs", "2",
                           "--posthoc-ema", "--ema-snapshots", "2", "--run-dir", trained])
    assert code == 0 and len(posthoc_ema.snapshots(trained)) == 2
    saved = str(tmp_path / "ema0.1.keras")
    assert generate_cli.main(["--checkpoint", trained, "--ema-length", "0.1", "--steps", "2",
                              "--num-images", "2", "--save-checkpoint", saved, "--quiet"]) == 0
    rebuilt, _ = posthoc_ema.reconstruct(trained, 0.1)
    for weight, expected in zip(runs.load_checkpoint(saved).ema_network.weights, rebuilt):
        np.testing.assert_array_equal(ops.convert_to_numpy(weight), expected)
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", trained, "--data-dir", str(tiny_folder),
                              "--nearest", "2", "--num-images", "4", "--kid-images", "4",
                              "--steps", "2", "--inception-weights", "random",
                              "--inception-size", "75", "--cache-dir", str(tmp_path / "cache"),
                              "--quiet"]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if "memorisation" in line]
    assert len(line) == 1 and "of 4 samples are near-copies" in line[0]
    run_dir = str(tmp_path / "mismatched")
    code = train_cli.main(["--data-dir", str(tiny_folder), "--init-from", trained, "--widths",
                           "8,32", "--run-dir", run_dir])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "needs the checkpoint's architecture" in error[-1]
    assert not os.path.exists(run_dir)
    assert evaluate_cli.main(["--checkpoint", trained, "--ema-length", "0.1,0.5"]) == 2
    assert "EMA length 0.5 must be in" in capsys.readouterr().err.strip().splitlines()[-1]
    assert evaluate_cli.main(["--checkpoint", saved, "--ema-length", "0.1"]) == 2
    assert "has none (ema_snapshots/)" in capsys.readouterr().err


def tiny_run(images, run_dir, epochs, callbacks=(), resume_from=None, **run):
    config = TrainingConfig(ModelConfig(widths=TINY["widths"], block_depth=1, augment=0.5,
                                        posthoc_ema=(0.05, 0.1)),
                            OptimizationConfig(epochs=epochs, batch_size=8),
                            RunConfig(validation_split=0.2, ema_snapshots=3, **run))
    return training.train(images, run_dir, config, verbose=0, callbacks=list(callbacks),
                          resume_from=resume_from)


STORY = """
import json, os
import numpy as np
from keras import ops
from diffusion_keras import posthoc_ema, runs
from diffusion_keras.data import load_image_folder
from tests.test_own_images import check_warps_are_exact, tiny_run
from tests.test_resume import InterruptAt

check_warps_are_exact()
folder, images_dir, output = {args}
images = load_image_folder(images_dir, 16)
whole = tiny_run(images, os.path.join(folder, "whole"), 3)
parted = os.path.join(folder, "parted")
try:
    tiny_run(images, parted, 3, [InterruptAt(1, 2)])
    raise AssertionError("the run was not interrupted")
except KeyboardInterrupt:
    assert [runs.checkpoint_epoch(path) for path in runs.run_checkpoints(parted)] == [1]
resumed = tiny_run(images, parted, 3, resume_from=runs.resume_point(parted))
rebuilt, updates = posthoc_ema.reconstruct(parted, 0.1)
kept = [ops.convert_to_numpy(weight) for weight in resumed.power_ema_networks[1].weights]
results = {{"rebuilt_error": max(float(np.abs(a - b).max()) for a, b in zip(rebuilt, kept)),
           "updates": updates, "snapshots": len(posthoc_ema.snapshots(parted))}}
for name in ("whole", "parted"):
    results[name] = [row["noise_loss"] for row in json.load(open(os.path.join(folder, name,
                                                                             "log.json")))]
results["images"] = [ops.convert_to_numpy(model.generate(3, 4, seed=0, verbose=False)).tolist()
                     for model in (whole, resumed)]
json.dump(results, open(output, "w"))
"""


@pytest.mark.slow
def test_every_backend_augments_keeps_snapshots_and_resumes_exactly(tiny_folder, tmp_path):
    """On TensorFlow, JAX and PyTorch: the pipe is exact, a run with --augment and --posthoc-ema
    interrupted mid-epoch and resumed logs the same losses and samples the same images as one
    that was not, and its snapshots rebuild the width it kept to float tolerance."""
    for backend in ("tensorflow", "jax", "torch"):
        folder, output = tmp_path / backend, str(tmp_path / f"{backend}.json")
        run_on_backend(backend, STORY.format(args=repr((str(folder), str(tiny_folder), output))))
        results = json.load(open(output))
        np.testing.assert_allclose(results["whole"], results["parted"], rtol=1e-5,
                                   err_msg=backend)
        np.testing.assert_allclose(*results["images"], atol=2e-3, err_msg=backend)
        assert results["rebuilt_error"] < 1e-5 and results["snapshots"] == 3, backend


@pytest.mark.slow
def test_fd_during_training_picks_best_and_small_runs_end_with_the_memorisation_check(
        tiny_folder, tmp_path, capsys):
    from diffusion_keras.data import load_image_folder

    images = load_image_folder(str(tiny_folder), 32)  # CIFAR-sized: the CIFAR-10 features
    run_dir = str(tmp_path / "run")
    training.train(images, run_dir, TrainingConfig(
        ModelConfig(widths=TINY["widths"], block_depth=1), OptimizationConfig(epochs=2, batch_size=8),
        RunConfig(validation_split=0.2, eval_every=1, eval_images=8)), verbose=0)
    log = json.load(open(os.path.join(run_dir, "log.json")))
    scores = [row["fd_cifar10"] for row in log]
    assert len(scores) == 2 and all(np.isfinite(scores))
    best = runs.load_checkpoint(os.path.join(run_dir, runs.CHECKPOINT_DIR, "best.keras"))
    steps = int(ops.convert_to_numpy(best.training_steps))
    steps_per_epoch = (len(images) - int(len(images) * 0.2)) // 8
    assert steps == (int(np.argmin(scores)) + 1) * steps_per_epoch
    summary = json.load(open(os.path.join(run_dir, "memorisation.json")))
    assert summary["samples"] == 64 and os.path.isfile(summary["picture"])
    assert "memorisation check:" in capsys.readouterr().out
