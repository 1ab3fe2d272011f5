import keras
import numpy as np
import pytest

from diffusion_keras import DiffusionModel
from diffusion_keras.errors import UsageError
from diffusion_keras.runs import load_checkpoint
from tests.conftest import TINY


def test_short_fit_on_real_image_files_lowers_the_noise_loss(trained_model):
    losses = trained_model.fit_history["noise_loss"]
    assert losses[-1] < losses[0]
    assert losses[-1] < 0.7, "an untrained model's noise loss is about E|eps| = 0.8"


def test_ema_network_starts_as_an_exact_copy():
    model = DiffusionModel(seed=0, **TINY)
    for online, ema in zip(model.network.get_weights(), model.ema_network.get_weights()):
        np.testing.assert_array_equal(online, ema)
    assert not model.ema_network.trainable_weights


@pytest.mark.slow
def test_ema_tracks_the_online_weights_inside_the_train_step(tiny_images):
    model = DiffusionModel(ema=0.5, ema_warmup=0.0, seed=0, **TINY)
    model.normalizer.adapt(tiny_images)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    batch = tiny_images[:8]
    start = model.network.get_weights()
    model.train_on_batch(batch)
    after_one = model.network.get_weights()
    model.train_on_batch(batch)
    # Each step averages in the online weights it started from: ema2 = 0.5 * w0 + 0.5 * w1.
    # (BatchNorm statistics are averaged after the forward pass has updated them.)
    trainable = [weight.trainable for weight in model.network.weights]
    for is_trainable, w0, w1, ema in zip(trainable, start, after_one,
                                         model.ema_network.get_weights()):
        if is_trainable:
            np.testing.assert_allclose(ema, 0.5 * w0 + 0.5 * w1, rtol=1e-5, atol=1e-7)
    differs = [not np.allclose(ema, online) for ema, online in
               zip(model.ema_network.get_weights(), model.network.get_weights())]
    assert any(differs)


def test_sampling_with_the_same_seed_is_deterministic(trained_model):
    first = trained_model.generate(4, diffusion_steps=5, seed=7)
    second = trained_model.generate(4, diffusion_steps=5, seed=7)
    other = trained_model.generate(4, diffusion_steps=5, seed=8)
    assert first.shape == (4, 16, 16, 3)
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


@pytest.mark.slow
def test_generate_in_batches_matches_one_batch(trained_model):
    noise = trained_model.initial_noise(6, seed=3)
    whole = trained_model.generate(6, 4, initial_noise=noise)
    batched = trained_model.generate(6, 4, initial_noise=noise, batch_size=4)
    np.testing.assert_allclose(whole, batched, atol=1e-5)
    # image i of a seed is the same as part of any range of images
    np.testing.assert_allclose(trained_model.generate(2, 4, seed=3, first_image=4), whole[4:],
                               atol=1e-5)


def test_generating_many_images_shows_progress_unless_quiet(trained_model, capsys):
    trained_model.generate(5, 2, seed=1, batch_size=2)
    assert "images/s" in capsys.readouterr().out
    trained_model.generate(5, 2, seed=1, batch_size=2, verbose=False)
    trained_model.generate(2, 2, seed=1, batch_size=2)  # "auto": one batch, no bar
    assert "images/s" not in capsys.readouterr().out


@pytest.mark.slow
def test_save_and_load_give_identical_samples(trained_model, tmp_path):
    path = str(tmp_path / "model.keras")
    trained_model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DiffusionModel)
    assert loaded.get_config() == trained_model.get_config()
    np.testing.assert_array_equal(loaded.generate(4, 5, seed=1), trained_model.generate(4, 5, seed=1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.normalizer.mean),
                               keras.ops.convert_to_numpy(trained_model.normalizer.mean))


def test_loading_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.keras"))
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="junk.keras"):
        load_checkpoint(str(junk))
    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(str(other))
    with pytest.raises(UsageError, match="not a diffusion_keras"):
        load_checkpoint(str(other))


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"ema": 1.5}, "ema momentum"),
    ({"image_size": 10, "widths": (8, 16, 32)}, "not divisible"),
])
def test_bad_settings_are_rejected_with_the_value(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DiffusionModel(**{**TINY, **kwargs})


def test_bad_generate_arguments_are_rejected_before_sampling(trained_model):
    with pytest.raises(UsageError, match="positive"):
        trained_model.generate(2, diffusion_steps=0)
    with pytest.raises(UsageError, match="number of images"):
        trained_model.generate(0)
    with pytest.raises(UsageError, match="shaped"):
        trained_model.generate(2, initial_noise=np.zeros((2, 8, 8, 3)))
    with pytest.raises(UsageError, match="non-negative"):
        trained_model.generate(2, seed=-1)


DDPM_TINY = {**TINY, "formulation": "ddpm", "timesteps": 50, "prediction": "v",
             "loss_function": "mse", "loss_target": "x0", "attention_resolutions": (8,),
             "norm": "group", "embedding": "every", "dropout": 0.1}


@pytest.mark.slow
def test_ddpm_formulation_trains_on_integer_timesteps_and_round_trips(tiny_images, tmp_path):
    model = DiffusionModel(seed=0, **DDPM_TINY)
    assert model.get_config()["schedule"] == "linear"
    times = model.formulation.training_times(256, model.seed_generator)
    times = keras.ops.convert_to_numpy(times).ravel() * 50
    np.testing.assert_allclose(times, np.round(times), atol=1e-4)
    assert times.min() >= 1 and times.max() <= 50 and len(np.unique(np.round(times))) > 40
    model.normalizer.adapt(tiny_images)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    logs = model.train_on_batch(tiny_images[:8], return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] != logs["noise_loss"]
    path = str(tmp_path / "ddpm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    for sampler, options in [("ddpm", {"variance": "beta"}), ("dpmpp2m", {})]:
        np.testing.assert_allclose(loaded.generate(2, 4, seed=1, sampler=sampler, **options),
                                   model.generate(2, 4, seed=1, sampler=sampler, **options),
                                   atol=1e-5)


@pytest.mark.parametrize("sampler, options", [
    ("ddim", {"eta": 0.5}), ("ddim", {"spacing": "quadratic"}), ("ddpm", {}), ("dpmpp2m", {}),
    ("heun", {}),
])
def test_every_sampler_generates_images_from_a_trained_model(trained_model, sampler, options):
    images = trained_model.generate(3, 4, seed=2, sampler=sampler, **options)
    again = trained_model.generate(3, 4, seed=2, sampler=sampler, **options)
    assert images.shape == (3, 16, 16, 3) and np.isfinite(images).all()
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(images, again)


def test_prediction_targets_share_the_denoiser_contract():
    """An untrained network outputs zeros; each target reads zeros its own way."""
    noisy = keras.ops.ones((1, 16, 16, 3))
    noise_rates, signal_rates = keras.ops.full((1, 1, 1, 1), 0.6), keras.ops.full((1, 1, 1, 1), 0.8)
    expected = {"epsilon": (0.0, 1.25), "x0": (1 / 0.6, 0.0), "v": (0.6, 0.8)}
    for prediction, (noise, image) in expected.items():
        model = DiffusionModel(seed=0, prediction=prediction, **TINY)
        pred_noises, pred_images = model.denoise(noisy, noise_rates, signal_rates)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_noises), noise, rtol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(pred_images), image, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"formulation": "score"}, "formulation"),
    ({"timesteps": 0}, "timesteps"),
    ({"prediction": "score"}, "unknown prediction"),
    ({"loss_function": "huber"}, "loss function"),
    ({"loss_target": "score"}, "loss target"),
])
def test_bad_formulation_settings_are_rejected_with_the_value(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DiffusionModel(**{**TINY, **kwargs})


def test_bad_sampler_settings_are_rejected_before_compiling(trained_model):
    with pytest.raises(UsageError, match="eta"):
        trained_model.generate(2, 3, sampler="ddim", eta=1.5)
    with pytest.raises(UsageError, match="spacing"):
        trained_model.generate(2, 3, spacing="cubic")


@pytest.mark.slow
def test_mixed_precision_trains_samples_and_round_trips(tiny_images, tmp_path):
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8),
                        OptimizationConfig(precision="mixed_bfloat16", accumulate_steps=2))
    assert keras.config.dtype_policy().name == "float32", "the global policy is left alone"
    assert model.network.layers[-1].dtype_policy.name == "float32"  # the output stays float32
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.network.layers)
    assert model.optimizer.gradient_accumulation_steps == 2
    model.normalizer.adapt(tiny_images)
    model.train_on_batch(tiny_images[:8])
    samples = model.generate(2, 3, seed=0)
    assert np.all(np.isfinite(samples))
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in loaded.network.layers)
    np.testing.assert_allclose(loaded.generate(2, 3, seed=0), samples, atol=1e-6)


@pytest.mark.slow
def test_ema_warm_up_follows_the_online_weights_from_the_first_update(tiny_images):
    """Momentum min(ema, 1 - (1 + n)^-p) after n updates: 0 for the first, so the EMA network
    starts from the current weights instead of holding on to the initial ones."""
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(**TINY, ema_warmup=0.75, seed=0), OptimizationConfig())
    model.normalizer.adapt(tiny_images)
    kernel = lambda network: np.array(network.layers[-1].kernel)  # noqa: E731 (zero-initialised: the first to move)
    initial = kernel(model.network)
    model.train_on_batch(tiny_images[:8])  # EMA update 0 (momentum 0) with the initial weights
    np.testing.assert_allclose(kernel(model.ema_network), initial, rtol=1e-6)
    after_one = kernel(model.network)
    model.train_on_batch(tiny_images[:8])  # EMA update 1, with the weights after one step
    momentum = 1.0 - 2.0**-0.75  # 0.41, not 0.999: the EMA already holds 59% of the new weights
    np.testing.assert_allclose(kernel(model.ema_network),
                               momentum * initial + (1 - momentum) * after_one, rtol=1e-5, atol=1e-7)
    model.train_on_batch(tiny_images[:8])
    assert float(np.asarray(model.training_steps)) == 3.0


@pytest.mark.slow
def test_ema_updates_once_per_optimizer_update_when_accumulating(tiny_images):
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(**TINY, ema=0.5, ema_warmup=0.0, seed=0),
                        OptimizationConfig(accumulate_steps=2))
    model.normalizer.adapt(tiny_images)
    kernel = lambda network: np.array(network.layers[-1].kernel)  # noqa: E731 (zero-initialised: the first to move)
    initial = kernel(model.network)
    model.train_on_batch(tiny_images[:8])  # EMA of the initial weights; no update yet
    model.train_on_batch(tiny_images[8:16])  # the first update happens after this batch
    np.testing.assert_allclose(kernel(model.ema_network), initial, rtol=1e-6)
    updated = kernel(model.network)
    assert not np.allclose(updated, initial)
    model.train_on_batch(tiny_images[:8])  # first batch of the next cycle: the EMA takes it in
    expected = 0.5 * initial + 0.5 * updated
    np.testing.assert_allclose(kernel(model.ema_network), expected, rtol=1e-5, atol=1e-7)
    model.train_on_batch(tiny_images[8:16])  # mid-cycle: no EMA update
    np.testing.assert_allclose(kernel(model.ema_network), expected, rtol=1e-5, atol=1e-7)


def test_learning_rate_warms_up_then_stays_or_decays():
    from diffusion_keras.config import OptimizationConfig
    from diffusion_keras.training import learning_rate_schedule

    assert learning_rate_schedule(OptimizationConfig(learning_rate=2e-3), 100) == 2e-3
    for kind, last in (("constant", 2e-3), ("cosine", 0.0)):
        schedule = learning_rate_schedule(
            OptimizationConfig(learning_rate=2e-3, warmup_steps=10, learning_rate_schedule=kind), 100)
        rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 100)]
        np.testing.assert_allclose(rates, [0.0, 1e-3, 2e-3, last], atol=1e-9)


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal", "lognormal"])
def test_training_times_follow_their_distribution(distribution):
    model = DiffusionModel(seed=0, formulation="continuous", time_distribution=distribution, **TINY)
    times = model.formulation.training_times(4000, model.seed_generator)
    times = keras.ops.convert_to_numpy(times).ravel()
    assert times.min() >= 0.0 and times.max() <= 1.0
    noise_rates, signal_rates = map(keras.ops.convert_to_numpy, model.formulation.schedule(times))
    log_sigmas = np.log(noise_rates / signal_rates)
    if distribution == "uniform":
        assert abs(times.mean() - 0.5) < 0.02
    elif distribution == "logit_normal":
        logits = np.log(times / (1 - times))
        assert abs(logits.mean()) < 0.05 and abs(logits.std() - 1.0) < 0.05
    else:  # EDM's log-normal noise levels, clipped to the schedule's range (offset cosine: -1.1..3.9)
        inside = (log_sigmas > -1.09) & (log_sigmas < 3.89)
        from math import erf, sqrt

        from diffusion_keras.formulation import EDM_LOG_SIGMA_MEAN, EDM_LOG_SIGMA_STD
        cdf = lambda x: 0.5 * (1 + erf((x - EDM_LOG_SIGMA_MEAN) / (EDM_LOG_SIGMA_STD * sqrt(2))))  # noqa: E731
        assert abs(inside.mean() - (cdf(3.89) - cdf(-1.09))) < 0.03
        assert abs(np.median(log_sigmas) - EDM_LOG_SIGMA_MEAN) < 0.05


def test_min_snr_weights_cap_the_clean_image_weight_at_gamma():
    model = DiffusionModel(seed=0, formulation="continuous", loss_weighting="min_snr",
                           loss_function="mse", min_snr_gamma=5.0, **TINY)
    noise_rates = np.array([0.1, 0.6, 0.99], "float32").reshape(3, 1, 1, 1)
    signal_rates = np.sqrt(1 - noise_rates**2)
    snrs = (signal_rates / noise_rates) ** 2
    weights = keras.ops.convert_to_numpy(model.formulation.min_snr_weights(noise_rates, signal_rates))
    np.testing.assert_allclose(weights, np.minimum(snrs, 5.0) / snrs, rtol=1e-5)  # epsilon space


def test_generate_samples_with_the_network_asked_for(trained_model):
    """"online" samples the trained weights, "ema" their average, a network of the architecture its
    own weights: chosen, not swapped in, so the EMA is left as it was."""
    ema = [np.array(weight) for weight in trained_model.ema_network.get_weights()]
    online = trained_model.generate(3, 3, seed=2, network="online", verbose=False)
    averaged = trained_model.generate(3, 3, seed=2, verbose=False)
    assert np.abs(online - averaged).max() > 1e-3, "the online and EMA weights differ"
    copy = keras.models.clone_model(trained_model.network)
    copy.set_weights(trained_model.network.get_weights())
    np.testing.assert_allclose(trained_model.generate(3, 3, seed=2, network=copy, verbose=False),
                               online, atol=1e-5)
    for kept, now in zip(ema, trained_model.ema_network.get_weights()):
        np.testing.assert_array_equal(kept, now)
    with pytest.raises(UsageError, match="unknown network 'best'; choose one of \\['ema', 'online'\\]"):
        trained_model.generate(3, 3, network="best")


def test_an_unseeded_generate_leaves_the_training_random_stream_alone(trained_model):
    state = np.array(trained_model.seed_generator.state)
    first, second = (trained_model.generate(2, 2, verbose=False) for _ in range(2))
    np.testing.assert_array_equal(np.array(trained_model.seed_generator.state), state)
    assert np.abs(first - second).max() > 1e-3, "each unseeded call draws its own seed"
