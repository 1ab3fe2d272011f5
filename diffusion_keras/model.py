"""DiffusionModel: the keras-io DDIM model made backend-neutral, seeded and serialisable.

Training goes through Keras' own `fit` on every backend: `call` normalises a batch and
`compute_loss` noises it, denoises it and updates the EMA network, all inside the compiled step.
A class-conditional model (`class_names`) fits on (images, labels) and samples with classifier-free
guidance (`guidance`).
"""

import functools
import time

import keras
import numpy as np
from keras import layers, ops

# optimizers: registers KernelMuon with Keras wherever DiffusionModel is, for the checkpoints that
# name it as their optimizer
from diffusion_keras import (  # noqa: F401
    augmentation,
    backend,
    checks,
    distributed,
    interrupts,
    optimizers,
    posthoc_ema,
    samplers,
    seeding,
)
from diffusion_keras.config import DEFAULT_SAMPLER, ModelConfig
from diffusion_keras.errors import NonFiniteSamples, UsageError
from diffusion_keras.formulation import Formulation
from diffusion_keras.guidance import guided_denoiser
from diffusion_keras.unet import build_unet

NETWORKS = ("ema", "online")  # the weights `denoise` and `generate` can use, besides a network


def ema_momentum(updates, ema, warmup):
    """The EMA momentum after `updates` optimizer updates: `ema`, or with warm-up power p > 0
    min(ema, 1 - (1 + updates)^-p) (k-diffusion's warm-up)."""
    if warmup <= 0:
        return ema
    return ops.minimum(ema, 1.0 - (1.0 + updates) ** -warmup)


@keras.saving.register_keras_serializable(package="diffusion_keras")
class DiffusionModel(keras.Model):
    """Denoising diffusion model with an EMA copy of its U-Net, sampled with any sampler.

    Its settings are a `ModelConfig` (pass one, or its fields as keywords); what it learns is its
    `formulation` (`formulation.Formulation`): `"continuous"` (keras-io DDIM) trains on times in
    [0, 1]; `"ddpm"` (Ho et al. 2020) on integer timesteps k = 1..`timesteps`, i.e. times k / T,
    with the linear beta schedule; `"flow"` on rectified flow's straight path with a velocity
    target. Either way the network is conditioned on the noise variance, a one-to-one function of
    time, so one network serves every sampler.
    With `class_names` the network also takes a class index per image (`len(class_names)`: the
    no-class token that label dropout trains and guidance subtracts).
    """

    def __init__(self, config=None, **kwargs):
        settings = {name: kwargs.pop(name) for name in ModelConfig.field_names() if name in kwargs}
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        config = (config or ModelConfig()).replace(**settings).resolved()
        super().__init__(**kwargs)
        self.config = config
        self.formulation = Formulation(config)  # schedule, target, training times and loss
        self.normalizer = layers.Normalization(axis=-1, dtype="float32")  # exact in mixed precision
        self.normalizer.build((None, *self.image_shape))
        with backend.dtype_policy(self.dtype_policy):  # e.g. mixed_bfloat16, saved in the config
            self.network = build_unet(config, name="network")
            self.ema_network = build_unet(config, name="ema_network")
            # post-hoc EMA's power-function averages, one per width (`posthoc_ema`)
            self.power_ema_networks = [build_unet(config, name=f"power_ema_network_{index}")
                                       for index in range(len(config.posthoc_ema))]
        self.power_gammas = [posthoc_ema.power(width) for width in config.posthoc_ema]
        for network in [self.ema_network, *self.power_ema_networks]:
            network.set_weights(self.network.get_weights())
            network.trainable = False
        # batches trained on, saved with the model: the EMA warm-up and accumulation phase read it
        self.training_steps = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              name="training_steps")
        self.seed_generator = keras.random.SeedGenerator(config.seed)
        self.noise_loss_tracker = keras.metrics.Mean(name="noise_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        self._samplers = {}
        self.built = True

    def get_config(self):
        return {**super().get_config(), **self.config.to_dict()}

    @property
    def image_shape(self):
        return (self.config.image_size, self.config.image_size, self.config.channels)

    def denormalize(self, images):
        """Model space back to [0, 1] pixels, using the normaliser's adapted statistics."""
        images = self.normalizer.mean + images * ops.sqrt(self.normalizer.variance)
        return ops.clip(images, 0.0, 1.0)

    @property
    def null_label(self):
        """The no-class token: the class index a class-conditional network reads as "any class"."""
        return len(self.config.class_names)

    def _require_classes(self):
        if not self.config.class_names:
            raise UsageError("this model is unconditional (built without class_names), so it takes "
                             "no labels or classes; drop them, or train a class-conditional model")

    def class_indices(self, classes):
        """Class names or indices (ints, or their strings as a command line gives them) -> indices;
        a name wins over an index that reads the same."""
        self._require_classes()
        names = self.config.class_names
        indices = []
        for value in [classes] if isinstance(classes, (str, int, np.integer)) else classes:
            if value in names:
                indices.append(names.index(value))
            elif not isinstance(value, bool) and str(value).isdigit() and int(value) < len(names):
                indices.append(int(value))
            else:
                raise UsageError(f"unknown class {value!r}; known: {list(names)} "
                                 f"(or indices 0-{len(names) - 1})")
        return indices

    def denoise(self, noisy_images, noise_rates, signal_rates, training=False, labels=None,
                network=None, augment_labels=None):
        """Predict noise and clean image with `network` (`network_for`: "ema", "online" or a
        network of this architecture; default: the online network when training, else the EMA).
        A class-conditional network takes `labels`, class indices (batch,); without them it
        predicts unconditionally (the no-class token). A network trained with augmentation takes
        `augment_labels` (batch, AUGMENT_LABELS); without them, zeros: untransformed images, what
        sampling wants."""
        network = self.network_for(network or ("online" if training else "ema"))
        inputs = [ops.convert_to_tensor(noisy_images), ops.convert_to_tensor(noise_rates) ** 2]
        if self.config.class_names:
            if labels is None:
                labels = ops.zeros_like(noise_rates[:, 0, 0, 0], dtype="int32") + self.null_label
            inputs.append(ops.reshape(ops.cast(labels, "int32"), (-1, 1)))
        elif labels is not None:
            self._require_classes()  # raises: an unconditional network takes no labels
        if self.config.augment:
            if augment_labels is None:
                augment_labels = ops.zeros((ops.shape(noise_rates)[0], augmentation.AUGMENT_LABELS))
            inputs.append(ops.convert_to_tensor(augment_labels, "float32"))
        outputs = network(inputs, training=training)
        return self.formulation.to_noises_and_images(outputs, noisy_images, noise_rates,
                                                     signal_rates)

    def network_for(self, network):
        """"ema" (the averaged weights, what sampling uses by default), "online" (the weights the
        optimizer trains) or a Keras network of the same architecture (other weights, such as an
        extra average), so callers choose weights instead of swapping them into `ema_network`."""
        if isinstance(network, keras.Model):
            return network
        if network not in NETWORKS:
            raise UsageError(f"unknown network {network!r}; choose one of {list(NETWORKS)} or pass "
                             "a Keras network of this model's architecture")
        return self.ema_network if network == "ema" else self.network

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras' `fit`, after `check_training_data` has looked at the first batch."""
        self.check_training_data(x)
        return super().fit(x, y, *args, **kwargs)

    def check_training_data(self, data):
        """One line, before any step, for what this model would otherwise learn silently wrong: a
        normaliser never adapted, images of another shape, or float images outside [0, 1]. Looks at
        an array's first images or a `keras.utils.PyDataset`'s first batch (tf.data: not at all)."""
        mean, variance = (ops.convert_to_numpy(weight) for weight in
                          (self.normalizer.adapt_mean, self.normalizer.adapt_variance))
        if np.all(mean == 0) and np.all(variance == 1):
            raise UsageError("the normaliser has not been adapted to the data: call "
                             "model.normalizer.adapt(images / 255.0) (or a sample of them) before "
                             "fit")
        if isinstance(data, keras.utils.PyDataset):
            data = data[0]
        if isinstance(data, (tuple, list)):
            data = data[0]
        if not hasattr(data, "shape") or not hasattr(data, "dtype") or len(data.shape) != 4:
            return
        if tuple(data.shape[1:]) != self.image_shape:
            raise UsageError(f"the images are shaped {tuple(data.shape[1:])} but this model makes "
                             f"{self.image_shape}; resize them (data.load_image_folder(..., "
                             "image_size)) or build the model for them")
        sample = np.asarray(data[:256])
        if sample.dtype.kind == "f" and (sample.max() > 1.001 or sample.min() < -0.001):
            raise UsageError(f"float images must be in [0, 1], these reach {sample.min():g} to "
                             f"{sample.max():g}: divide them by 255, or pass uint8 images")

    def call(self, images, training=False):
        """Pixels -> the normalised space the network is trained in. Integer images (uint8 batches
        straight from the data) are scaled to [0, 1] here, inside the step; floats are in [0, 1]."""
        if "int" in keras.backend.standardize_dtype(images.dtype):
            images = ops.cast(images, "float32") / 255.0
        return self.normalizer(images)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Noise the normalised batch at the formulation's random times and score the prediction
        by its loss; the noise and image MAE are tracked whatever the loss. `y`: a
        class-conditional model's labels (batch,) or (batch, 1). With `augment`, a training batch
        is augmented first (`augmentation.augment`; validation batches are not)."""
        images, augment_labels = y_pred, None
        if self.config.augment and training:
            images, augment_labels = augmentation.augment(images, self.config.augment,
                                                          self.seed_generator)
        noises = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        diffusion_times = self.formulation.training_times(ops.shape(images)[0], self.seed_generator)
        return self.denoising_loss(images, noises, diffusion_times,
                                   self.training_labels(y, training), training, augment_labels)

    def denoising_loss(self, images, noises, diffusion_times, labels=None, training=True,
                       augment_labels=None):
        """The formulation's loss of denoising `images` noised by `noises` at these times (the
        target pair a distilled student is given instead of data and fresh noise), tracking the
        noise and image MAE, then the EMA update when training."""
        noisy_images, noise_rates, signal_rates = self.formulation.noisy(images, noises,
                                                                         diffusion_times)
        pred_noises, pred_images = self.denoise(noisy_images, noise_rates, signal_rates, training,
                                                labels, augment_labels=augment_labels)
        loss = self.formulation.loss(noises, images, pred_noises, pred_images, noise_rates,
                                     signal_rates)
        noise_loss = ops.mean(ops.abs(noises - pred_noises))
        image_loss = ops.mean(ops.abs(images - pred_images))
        self.noise_loss_tracker.update_state(noise_loss)
        self.image_loss_tracker.update_state(image_loss)
        if training:
            self.update_ema()
        return loss

    def training_labels(self, labels, training):
        """A class-conditional model's batch labels, each replaced by the no-class token with
        probability `label_dropout` when training, so the one network also learns the unconditional
        prediction that guidance needs; drawn from the seed generator, so a resumed run drops the
        same labels."""
        if not self.config.class_names:
            return labels  # None; labels given to an unconditional model fail in `denoise`
        if labels is None:
            raise UsageError(f"this model is class-conditional ({len(self.config.class_names)} "
                             "classes): fit it on (images, labels), e.g. model.fit(x=images, "
                             "y=labels)")
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        if not training or self.config.label_dropout == 0:
            return labels
        dropped = keras.random.uniform(ops.shape(labels), seed=self.seed_generator) \
            < self.config.label_dropout
        return ops.where(dropped, self.null_label, labels)

    def restart_training_noise(self, epoch):
        """Start epoch `epoch`'s training noise from (seed, epoch) (`seeding.epoch_seed`).

        `.keras` files do not keep a SeedGenerator's state, so a resumed run calls this to draw
        exactly the noise an uninterrupted one did (`callbacks.EpochSeeds` calls it every epoch).
        """
        if self.config.seed is None:  # an unseeded model draws fresh noise every run
            return
        state = self.seed_generator.state
        state.assign(seeding.epoch_seed(self.config.seed, epoch).astype(state.dtype))

    def update_ema(self):
        """ema <- m * ema + (1 - m) * online, for every weight (BatchNorm statistics included), once
        per optimizer update: on the first batch of each gradient-accumulation cycle, when the online
        weights have just changed. With `ema_warmup` p > 0 the momentum is min(ema, 1 - (1 + n)^-p)
        after n updates (k-diffusion's EMA warm-up), so a short run samples from its recent weights,
        not from the initial ones.

        Written as ema -= (1 - m) * (ema - online): one op fewer per weight, about 10% faster
        training on TensorFlow CPU. No stop_gradient needed: assignments are not differentiated,
        and on TensorFlow wrapping the weights in one halved the training speed.
        The post-hoc EMA's power averages are updated in the same way, with momentum
        (1 - 1/t)^(gamma + 1) at the t-th update (`posthoc_ema.momentum`).
        """
        accumulate = getattr(self.optimizer, "gradient_accumulation_steps", None) or 1
        steps = ops.convert_to_tensor(self.training_steps)  # a read now, before the increment
        updates = ops.floor(steps / accumulate)
        momenta = [ema_momentum(updates, self.config.ema, self.config.ema_warmup)]
        momenta += [posthoc_ema.momentum(updates + 1.0, gamma) for gamma in self.power_gammas]
        applies = 1.0
        if accumulate > 1:
            applies = ops.cast(ops.equal(ops.mod(steps, accumulate), 0.0), "float32")
        for momentum, network in zip(momenta, [self.ema_network, *self.power_ema_networks]):
            rate = ops.cast((1.0 - momentum) * applies, "float32")  # once, not per weight
            for weight, average in zip(self.network.weights, network.weights):
                average.assign_sub(rate * (average - weight))
        self.training_steps.assign(steps + 1.0)

    def sampling_times(self, diffusion_steps, spacing="uniform"):
        """The times the network is called at (`samplers.sampling_times`); on the model's integer
        timesteps for the DDPM formulation."""
        return samplers.sampling_times(diffusion_steps, spacing, self.formulation.log_sigma_table,
                                       self.formulation.timesteps)

    def reverse_diffusion(self, initial_noise, diffusion_times, sampler=DEFAULT_SAMPLER,
                          step_seeds=None, callback=None, labels=None, guidance=None, network="ema",
                          **options):
        """Pure noise to normalised images with `network` (`network_for`), any sampler (see
        `samplers`) and the times from `sampling_times`; towards `labels` (None: unconditional),
        guided by `guidance` (None: not guided, i.e. w = 1)."""
        sample = samplers.get_sampler(sampler, **options)
        denoise = functools.partial(self.denoise, network=network)
        if guidance is None:
            denoise = functools.partial(denoise, labels=labels)
        else:
            denoise = guided_denoiser(denoise, labels, guidance, self.null_label)
        return sample(denoise, initial_noise, diffusion_times, self.formulation.schedule,
                      step_seeds=step_seeds, callback=callback)

    def initial_noise(self, num_images, seed=0, first_image=0):
        """The seeded starting noise of images first_image.. (`seeding`: NumPy, every backend)."""
        checks.seed(seed)
        return seeding.initial_noise(seed, first_image, num_images, self.image_shape)

    def generate(self, num_images, diffusion_steps=20, initial_noise=None, seed=None,
                 batch_size=None, sampler=None, spacing=None, callback=None,
                 verbose="auto", first_image=0, labels=None, guidance=1.0, network="ema",
                 **options):
        """Sample `num_images` images in [0, 1] as a NumPy array (N, H, W, C), batch by batch.

        `sampler` is a name in `samplers.SAMPLERS` (default: the model's, `ModelConfig.
        default_sampler`: DPM-Solver++(2M), DDIM for a distilled student), `options` its settings
        (eta, variance), `spacing` its time grid (default: the sampler's `default_spacing`). One seed
        per image: image i is a function of (seed, first_image + i) and these settings only, whatever
        `batch_size` (default: this device's fastest) or `num_images`; `initial_noise` replaces the
        seeded starting noise (interpolation). `callback(step, time, noisy_images, pred_images)`
        (normalised space, every batch) runs the sampler eagerly, step by step. `verbose`: a
        progress bar (images/s, time left); "auto" shows it when there is more than one batch.

        A class-conditional model draws class `labels` (one index for all, or one per image; None:
        unconditional) with classifier-free `guidance` w (1: plain conditional; any other w runs
        each network call on the batch doubled, see `guidance.guided_denoiser`). Labels and guidance
        are inputs of the compiled loop, so a guidance sweep compiles once, and they leave each
        image's seeded noise as it is: image i of a seed starts from the same noise whatever the
        class or guidance. `network`: the weights that sample (`network_for`; default the EMA).
        An unseeded call draws a fresh seed from the operating system, never from the training
        random stream (which it would move).
        """
        sampler = sampler or self.config.default_sampler
        record = samplers.sampler_record(sampler)
        record.bind(**options)  # bad settings fail here, before any work
        spacing = spacing or record.default_spacing
        self.config.check_sampling(sampler, diffusion_steps, spacing, options)
        chosen = self.network_for(network)
        times = self.sampling_times(diffusion_steps, spacing)
        initial_noise, num_images = self._checked_noise(initial_noise, num_images)
        labels = self._sampling_labels(labels, num_images)
        guidance = self._checked_guidance(guidance, labels)
        seed = seeding.fresh_seed() if seed is None else seed
        checks.seed(seed)
        batch_size = distributed.batch_size_for_devices(  # split over the devices, if several
            min(batch_size or backend.default_sample_batch_size(), num_images))
        if callback is None:
            sample = self._compiled_sampler(times, sampler, options, chosen)
        else:  # eagerly, step by step, so the callback sees every step
            sample = self._sampling_loop(times, sampler, options, chosen, callback)
        stochastic = record.is_stochastic(options)  # else no step seeds to draw
        show = num_images > batch_size if verbose == "auto" else bool(verbose)
        progress = keras.utils.Progbar(num_images, unit_name="image",
                                       stateful_metrics=["images/s"]) if show else None
        started, batches = time.perf_counter(), []
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            noise = (initial_noise[start:start + count] if initial_noise is not None
                     else self.initial_noise(count, seed, first_image + start))
            step_seeds = (seeding.step_seeds(seed, first_image + start, count, len(times) - 1)
                          if stochastic else np.zeros((len(times) - 1, count, 2), "int32"))
            batch_labels = None if labels is None else labels[start:start + count]
            inputs = padded_batch(noise, step_seeds, batch_labels, batch_size)
            images = distributed.to_numpy(sample(*inputs, guidance))[:count]
            if not np.isfinite(images).all():
                raise NonFiniteSamples("the model sampled non-finite values (NaN or infinity): its "
                                       "weights have diverged; use an earlier checkpoint")
            batches.append(images)
            interrupts.check()  # a Ctrl-C stops here, between batches
            if progress is not None:
                done = start + count
                progress.update(done, [("images/s", done / (time.perf_counter() - started))])
        return np.concatenate(batches)

    def _checked_noise(self, initial_noise, num_images):
        """(initial noise as float32 NumPy or None, the number of images it or `num_images` asks
        for), checked against this model's image shape."""
        if initial_noise is not None:
            initial_noise = np.asarray(ops.convert_to_numpy(initial_noise), dtype="float32")
            if initial_noise.shape[1:] != self.image_shape:
                raise UsageError(f"initial noise must be shaped (N, *{self.image_shape}) for this "
                                 f"model, got {initial_noise.shape}")
            num_images = len(initial_noise)
        checks.positive_int(num_images, "number of images")
        return initial_noise, num_images

    @staticmethod
    def _checked_guidance(guidance, labels):
        """Guidance w as the compiled loop's input: None for w = 1 (one network call per step)."""
        checks.guidance(guidance)
        if guidance != 1 and labels is None:
            raise UsageError(f"guidance {guidance} steers towards classes: pass labels too (class "
                             "indices of a class-conditional model), or leave guidance at 1")
        return np.array(guidance, "float32") if guidance != 1 else None

    def _sampling_labels(self, labels, num_images):
        """`generate`'s labels as an int32 array (num_images,), checked; None stays None."""
        if labels is None:
            return None
        self._require_classes()
        if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
            labels = [labels] * num_images
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != num_images or labels.dtype.kind not in "iu":
            raise UsageError(f"labels must be one class index or {num_images} (one per image), got "
                             f"{labels.dtype} shaped {labels.shape}; model.class_indices turns class "
                             "names into indices")
        outside = labels[(labels < 0) | (labels >= self.null_label)]
        if len(outside):
            raise UsageError(f"class index {outside[0]} is out of range: this model's classes are "
                             f"0-{self.null_label - 1} ({list(self.config.class_names)})")
        return labels.astype("int32")

    def _sampling_loop(self, diffusion_times, sampler, options, network, callback=None):
        """The whole sampling loop, then denormalisation, as one function of (initial noise, step
        seeds, labels, guidance); labels and guidance None: none."""
        def sample(initial_noise, step_seeds, labels, guidance):
            return self.denormalize(self.reverse_diffusion(
                initial_noise, diffusion_times, sampler, step_seeds, callback, labels, guidance,
                network, **options))

        return sample

    def _compiled_sampler(self, diffusion_times, sampler, options, network):
        """`_sampling_loop` compiled, once per sampler setting and network (labels and guidance
        are its inputs, so a guidance sweep compiles once; None compiles apart)."""
        key = (tuple(diffusion_times.tolist()), sampler, tuple(sorted(options.items())), network)
        if key not in self._samplers:
            variables = network.variables + self.normalizer.variables
            self._samplers[key] = backend.compile_function(
                self._sampling_loop(diffusion_times, sampler, options, network), variables)
        return self._samplers[key]


def padded_batch(noise, step_seeds, labels, batch_size):
    """One batch of sampling inputs padded to `batch_size` rows (so every batch runs the one
    compiled shape; the padding's images are discarded) and split over the devices."""
    padding = batch_size - len(noise)
    if padding:
        noise = np.pad(noise, ((0, padding), (0, 0), (0, 0), (0, 0)))
        step_seeds = np.pad(step_seeds, ((0, 0), (0, padding), (0, 0)))
        if labels is not None:
            labels = np.pad(labels, (0, padding))
    if labels is not None:
        labels = distributed.shard_batch(labels)
    return distributed.shard_batch(noise), step_seeds, labels
