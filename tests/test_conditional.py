"""Class-conditional models and classifier-free guidance: training on (images, labels), sampling
towards classes at any guidance weight, saving, the CLI, and every backend."""

import json
import os

import keras
import numpy as np
import pytest

from diffusion_keras import DiffusionModel
from diffusion_keras.cli import generate
from diffusion_keras.config import ModelConfig
from diffusion_keras.errors import UsageError
from diffusion_keras.guidance import guided_denoiser
from diffusion_keras.runs import load_checkpoint
from tests.conftest import TINY, run_on_backend

CLASSES = ("red", "green", "7")


def labels_for(count):
    return np.arange(count) % len(CLASSES)


def conditional_model(images, epochs=2):
    """A tiny class-conditional model fitted on uint8 (images, labels), its EMA class embedding
    then scrambled so that the classes change the prediction clearly, as a trained one's would."""
    keras.utils.set_random_seed(0)
    model = DiffusionModel(class_names=CLASSES, seed=0, **TINY)
    model.normalizer.adapt(images)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    pixels = np.round(images * 255).astype("uint8")
    model.initial_embedding = class_embedding(model.network).get_weights()[0]
    model.fit_history = model.fit(x=pixels, y=labels_for(len(images)), batch_size=16,
                                  epochs=epochs, verbose=0).history
    embedding = class_embedding(model.ema_network)
    embedding.set_weights([np.random.default_rng(0).normal(size=w.shape) for w in
                           embedding.get_weights()])
    return model


def class_embedding(network):
    return next(layer for layer in network.layers if isinstance(layer, keras.layers.Embedding))


@pytest.fixture(scope="module")
def model(tiny_images):
    return conditional_model(tiny_images)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("conditional") / "model.keras")
    model.save(path)
    return path


def test_conditional_training_feeds_the_labels_to_the_network(model):
    assert [tensor.name for tensor in model.network.inputs] == [
        "noisy_images", "noise_variances", "class_labels"]
    assert np.isfinite(model.fit_history["loss"]).all()
    # every class's embedding, and the no-class token's (label dropout), was trained
    trained = class_embedding(model.network).get_weights()[0]
    assert trained.shape == (len(CLASSES) + 1, TINY["embedding_dims"])
    assert (np.abs(trained - model.initial_embedding).max(axis=1) > 1e-4).all()


def test_uint8_and_float_pixels_are_normalised_alike(model, tiny_images):
    pixels = np.round(tiny_images[:4] * 255).astype("uint8")
    normalised = keras.ops.convert_to_numpy(model(pixels))
    np.testing.assert_allclose(normalised, keras.ops.convert_to_numpy(model(pixels / 255.0)),
                               atol=1e-6)
    assert abs(normalised.mean()) < 1.0 and normalised.std() < 5.0, "not 0-255 pixels normalised"


def test_unconditional_models_keep_their_two_inputs():
    model = DiffusionModel(seed=0, **TINY)
    assert [tensor.name for tensor in model.network.inputs] == ["noisy_images", "noise_variances"]
    assert model.get_config()["class_names"] == []


def test_label_dropout_replaces_labels_at_its_rate_and_repeats_after_a_restart():
    model = DiffusionModel(class_names=CLASSES, label_dropout=0.2, seed=3, **TINY)
    labels = labels_for(6000)
    model.restart_training_noise(0)
    dropped = keras.ops.convert_to_numpy(model.training_labels(labels, training=True))
    kept = dropped != model.null_label
    assert abs((~kept).mean() - 0.2) < 0.02
    np.testing.assert_array_equal(dropped[kept], labels[kept])
    model.restart_training_noise(0)
    again = keras.ops.convert_to_numpy(model.training_labels(labels, training=True))
    np.testing.assert_array_equal(again, dropped)
    np.testing.assert_array_equal(  # validation scores the labels as given
        keras.ops.convert_to_numpy(model.training_labels(labels[:, None], training=False)), labels)


@pytest.mark.slow
def test_class_names_round_trip_through_config_json_and_keras_files(model, checkpoint):
    config = ModelConfig.from_dict({"class_names": ["cat", "dog"], "label_dropout": 0.2})
    assert config.class_names == ("cat", "dog")
    assert ModelConfig.from_dict(config.to_dict()) == config
    loaded = load_checkpoint(checkpoint)
    assert loaded.config.class_names == CLASSES and loaded.config.label_dropout == 0.1
    settings = {"seed": 1, "labels": [0, 1, 2], "guidance": 3.0, "sampler": "ddim"}
    np.testing.assert_allclose(loaded.generate(3, 3, **settings), model.generate(3, 3, **settings),
                               atol=1e-6)


@pytest.mark.parametrize("names, message", [
    ("cat", "list of strings"),
    (["cat", ""], "non-empty strings"),
    (["cat", 3], "non-empty strings"),
    (["cat", "dog", "cat"], "unique; repeated: \\['cat'\\]"),
])
def test_bad_class_names_are_one_line_errors(names, message):
    with pytest.raises(UsageError, match=message):
        ModelConfig(class_names=names)


def test_label_dropout_must_be_below_one():
    with pytest.raises(UsageError, match="label dropout must be in \\[0, 1\\)"):
        ModelConfig(class_names=CLASSES, label_dropout=1.0)


def test_guidance_zero_is_the_unconditional_prediction_and_one_the_conditional(model):
    rng = np.random.default_rng(0)
    noisy = rng.standard_normal((3, 16, 16, 3)).astype("float32")
    noise_rates = np.full((3, 1, 1, 1), 0.6, "float32")
    signal_rates = np.full((3, 1, 1, 1), 0.8, "float32")
    labels = np.array([0, 1, 2])

    def predict(denoise):
        return [keras.ops.convert_to_numpy(value) for value in
                denoise(noisy, noise_rates, signal_rates)]

    conditional = predict(lambda *rates: model.denoise(*rates, labels=labels))
    unconditional = predict(model.denoise)
    assert not np.allclose(conditional[1], unconditional[1], atol=1e-3)
    for weight, expected in ((0.0, unconditional), (1.0, conditional)):
        guided = predict(guided_denoiser(model.denoise, labels, weight, model.null_label))
        for value, reference in zip(guided, expected):
            np.testing.assert_allclose(value, reference, atol=1e-6)
    guided = predict(guided_denoiser(model.denoise, labels, 3.0, model.null_label))
    for value, cond, uncond in zip(guided, conditional, unconditional):
        np.testing.assert_allclose(value, uncond + 3.0 * (cond - uncond), atol=1e-5)


@pytest.mark.slow
def test_a_guidance_sweep_keeps_each_images_noise_and_compiles_once(model, monkeypatch):
    settings = {"seed": 4, "labels": 1, "sampler": "ddim"}
    starts = {}
    for guidance in (0.0, 5.0):
        model.generate(2, 3, guidance=guidance, callback=lambda step, time, noisy, pred, g=guidance:
                       starts.setdefault(g, keras.ops.convert_to_numpy(noisy)), **settings)
    np.testing.assert_array_equal(starts[0.0], starts[5.0])
    np.testing.assert_array_equal(starts[0.0], model.initial_noise(2, seed=4))

    np.testing.assert_allclose(model.generate(2, 3, guidance=0.0, **settings),
                               model.generate(2, 3, seed=4, sampler="ddim"), atol=1e-5)
    traces = []
    reverse_diffusion = model.reverse_diffusion
    monkeypatch.setattr(model, "reverse_diffusion",
                        lambda *args, **kwargs: traces.append(1) or reverse_diffusion(*args, **kwargs))
    model._samplers.clear()
    sweep = [model.generate(2, 3, guidance=guidance, **settings) for guidance in (0.0, 2.0, 7.0)]
    assert not np.allclose(sweep[0], sweep[2], atol=1e-3)
    if keras.backend.backend() != "torch":  # PyTorch runs eagerly: every call runs the Python
        assert len(traces) == 1, "guidance is an input of the compiled sampler, not a constant"


@pytest.mark.slow
def test_labels_are_padded_with_the_last_batch(model):
    labels = [2, 0, 1, 1, 0]
    whole = model.generate(5, 3, seed=2, labels=labels, guidance=2.0, batch_size=5)
    batched = model.generate(5, 3, seed=2, labels=labels, guidance=2.0, batch_size=2)
    np.testing.assert_allclose(batched, whole, atol=1e-5)
    np.testing.assert_allclose(model.generate(5, 3, seed=2, labels=0, guidance=2.0)[[1, 4]],
                               whole[[1, 4]], atol=1e-5)


def test_class_indices_take_names_or_indices(model):
    assert model.class_indices(["green", "7", "0", 1]) == [1, 2, 0, 1]
    assert model.class_indices("red") == [0]
    with pytest.raises(UsageError, match=r"unknown class 'blue'; known: \['red', 'green', '7'\]"):
        model.class_indices(["blue"])
    with pytest.raises(UsageError, match="unknown class '3'"):
        model.class_indices(["3"])


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": 3}, "class index 3 is out of range"),
    ({"labels": [0, -1]}, "class index -1 is out of range"),
    ({"labels": [0, 1, 2]}, "one class index or 2"),
    ({"labels": ["red", "green"]}, "class_indices"),
    ({"labels": 0, "guidance": -1.0}, "guidance must be a non-negative number"),
    ({"labels": 0, "guidance": float("nan")}, "guidance must be a non-negative number"),
    ({"guidance": 3.0}, "pass labels too"),
])
def test_bad_labels_and_guidance_are_rejected_before_sampling(model, kwargs, message):
    with pytest.raises(UsageError, match=message):
        model.generate(2, 3, seed=0, **kwargs)


def test_labels_and_models_must_match_in_fit_and_generate(tiny_images):
    unconditional = DiffusionModel(seed=0, **TINY)
    unconditional.normalizer.adapt(tiny_images)
    with pytest.raises(UsageError, match="this model is unconditional"):
        unconditional.generate(2, 2, labels=0)
    with pytest.raises(UsageError, match="this model is unconditional"):
        unconditional.class_indices(["red"])
    conditional = DiffusionModel(class_names=CLASSES, seed=0, **TINY)
    conditional.normalizer.adapt(tiny_images)
    for model, labels, message in ((unconditional, labels_for(8), "this model is unconditional"),
                                   (conditional, None, "fit it on \\(images, labels\\)")):
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        with pytest.raises(UsageError, match=message):
            model.fit(x=tiny_images[:8], y=labels, batch_size=8, verbose=0)


@pytest.mark.slow
def test_generate_cli_draws_class_rows_at_each_guidance(checkpoint, tmp_path):
    output = tmp_path / "out"
    assert generate.main(["--checkpoint", checkpoint, "--class", "green", "--class", "0",
                          "--guidance", "0,2.5", "--steps", "2", "--num-images", "3",
                          "--individual", "--output", str(output), "--quiet"]) == 0
    name = "model_dpmpp2m_log_snr_steps2_seed0_n3_classes-green-red_guidance0-2.5"
    picture = output / f"samples_{name}.png"
    assert picture.stat().st_size > 0
    metadata = json.loads((output / f"samples_{name}.json").read_text())
    assert metadata["classes"] == ["green", "red"] and metadata["guidance"] == [0.0, 2.5]
    assert metadata["num_images"] == 3
    assert metadata["files"] == [str(picture), str(output / f"samples_{name}")]
    individual = sorted(path.name for path in (output / f"samples_{name}").glob("*.png"))
    assert len(individual) == 2 * 2 * 3 == metadata["individual_images"]
    assert "class1_guidance2.5_0002.png" in individual


@pytest.mark.slow
def test_generate_cli_class_all_and_plain_grids_of_a_conditional_model(checkpoint, tmp_path):
    assert generate.main(["--checkpoint", checkpoint, "--class", "all", "--steps", "2",
                          "--num-images", "2", "--output", str(tmp_path), "--quiet"]) == 0
    metadata = json.loads(
        (tmp_path / "samples_model_dpmpp2m_log_snr_steps2_seed0_n2_classes-all_guidance1.json")
        .read_text())
    assert metadata["classes"] == list(CLASSES) and metadata["guidance"] == [1.0]
    assert generate.main(["--checkpoint", checkpoint, "--steps", "2", "--num-images", "2",
                          "--output", str(tmp_path), "--quiet"]) == 0  # unconditional samples
    metadata = json.loads((tmp_path / "samples_model_dpmpp2m_log_snr_steps2_seed0_n2.json").read_text())
    assert metadata["classes"] is None and metadata["guidance"] is None


@pytest.mark.parametrize("conditional, argv, message", [
    (True, ["--class", "blue"], "unknown class 'blue'"),
    (True, ["--guidance", "3"], "--guidance steers towards classes: add --class"),
    (True, ["--class", "red", "--guidance", "1,-2"], "--guidance: must be non-negative, got -2.0"),
    (False, ["--class", "red"], "need a class-conditional model"),
])
def test_generate_cli_bad_classes_are_one_line_before_any_folder(conditional, argv, message,
                                                                 checkpoint, tmp_path, capsys):
    path = checkpoint
    if not conditional:
        path = str(tmp_path / "unconditional.keras")
        DiffusionModel(seed=0, **TINY).save(path)
    output = tmp_path / "out"
    try:
        code = generate.main(["--checkpoint", path, "--steps", "2", "--output", str(output), *argv])
    except SystemExit as error:  # argparse
        code = error.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not output.exists()


def train_save_load_generate(checkpoint, folder):
    """On the running backend: guided images from the shared `checkpoint`; then a few training steps
    on (images, labels), a save and a load, with the images before and after; saved to
    `folder`/<backend>.npz for the caller to compare."""
    model = load_checkpoint(checkpoint)
    settings = {"seed": 3, "labels": [0, 2, 1], "guidance": 2.0, "sampler": "ddim"}
    shared = model.generate(3, 3, **settings)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype("uint8")
    history = model.fit(x=images, y=labels_for(16), batch_size=8, verbose=0).history
    trained = model.generate(3, 3, **settings)
    path = os.path.join(folder, f"{keras.backend.backend()}.keras")
    model.save(path)
    loaded = load_checkpoint(path)
    np.savez(os.path.join(folder, f"{keras.backend.backend()}.npz"), shared=shared, trained=trained,
             loaded=loaded.generate(3, 3, **settings), loss=history["loss"],
             class_names=np.array(loaded.config.class_names))


@pytest.mark.slow
def test_train_generate_save_and_load_on_every_backend(checkpoint, tmp_path):
    results = {}
    for backend in ("tensorflow", "jax", "torch"):
        if backend == keras.backend.backend():  # this process's backend: no new process
            train_save_load_generate(checkpoint, str(tmp_path))
        else:
            code = (f"from tests.test_conditional import train_save_load_generate; "
                    f"train_save_load_generate({json.dumps(checkpoint)}, "
                    f"{json.dumps(str(tmp_path))})")
            run_on_backend(backend, code)
        results[backend] = dict(np.load(tmp_path / f"{backend}.npz"))
    for backend, result in results.items():
        assert tuple(result["class_names"]) == CLASSES, backend
        assert np.isfinite(result["loss"]).all(), backend
        assert not np.allclose(result["trained"], result["shared"], atol=1e-6), backend
        np.testing.assert_allclose(result["loaded"], result["trained"], atol=1e-5, err_msg=backend)
        np.testing.assert_allclose(result["shared"], results["tensorflow"]["shared"], atol=1e-4,
                                   err_msg=backend)


# The data side: train.py --conditional learns the sub-folder classes from the prepared images.
CLI_TRAINING = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1", "--batch-size",
                "8", "--plot-every", "5"]


@pytest.mark.slow
def test_train_conditional_learns_the_sub_folder_classes_then_generates_them(tiny_folder,
                                                                              tmp_path):
    from diffusion_keras.cli import train

    run_dir = tmp_path / "run"
    assert train.main(["--conditional", "--data-dir", str(tiny_folder), "--run-dir",
                       str(run_dir), "--epochs", "1", *CLI_TRAINING]) == 0
    model = load_checkpoint(str(run_dir / "checkpoints" / "epoch_0001.keras"))
    assert model.config.class_names == ("a", "b")
    assert json.loads((run_dir / "config.json").read_text())["run"]["conditional"] is True
    assert generate.main(["--checkpoint", str(run_dir), "--class", "b", "--guidance", "0,2",
                          "--num-images", "2", "--steps", "2", "--output",
                          str(tmp_path / "out"), "--quiet"]) == 0
    assert any("guidance0-2" in name for name in os.listdir(tmp_path / "out"))


def test_train_conditional_on_a_folder_without_classes_is_one_line(tmp_path, capsys):
    from PIL import Image

    from diffusion_keras.cli import train

    for index in range(3):
        Image.new("RGB", (20, 20), (index * 50, 0, 0)).save(tmp_path / f"{index}.png")
    code = train.main(["--conditional", "--data-dir", str(tmp_path), "--run-dir",
                       str(tmp_path / "run"), *CLI_TRAINING])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "3 image(s) lie directly in it" in error and "<class name>/<images>" in error
    assert not (tmp_path / "run").exists()


def test_conditional_on_a_dataset_without_labels_is_refused():
    from diffusion_keras import data, image_cache

    unlabelled = image_cache.Source(name="x", description={"dataset": "x"}, count=0,
                                    items=lambda: iter(()), class_names=[])
    with pytest.raises(UsageError, match="has no label feature; drop --conditional"):
        data.check_classes(unlabelled, None)


@pytest.mark.slow
def test_conditional_run_resumes_exactly(tiny_folder, tmp_path):
    """Label dropout draws from the model's seed generator, restarted per epoch: a resumed
    conditional run repeats the uninterrupted one."""
    from diffusion_keras import runs, training
    from diffusion_keras.config import OptimizationConfig, RunConfig, TrainingConfig
    from diffusion_keras.data import open_images

    images = open_images(16, data_dir=str(tiny_folder), cache_dir=str(tmp_path / "cache"),
                         conditional=True)

    def config(epochs):
        return TrainingConfig(ModelConfig(widths=(8, 16), block_depth=1, label_dropout=0.5),
                              OptimizationConfig(epochs=epochs, batch_size=8),
                              RunConfig(validation_split=0.0, conditional=True, plot_every=5))

    whole = training.train(images, str(tmp_path / "whole"), config(2), verbose=0)
    training.train(images, str(tmp_path / "half"), config(1), verbose=0)
    resumed = training.train(images, str(tmp_path / "half"), config(2), verbose=0,
                             resume_from=runs.resume_point(str(tmp_path / "half")))
    for weight, expected in zip(resumed.weights, whole.weights):
        np.testing.assert_allclose(np.asarray(weight), np.asarray(expected), rtol=1e-5, atol=1e-6)
