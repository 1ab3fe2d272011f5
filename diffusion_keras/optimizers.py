"""The optimizers a run trains with: AdamW, or Muon (Jordan et al. 2024) on the U-Net's kernels."""

import math

import keras
from keras import ops

# Kernels with a side shorter than this (the 1x1 convolutions from and to the image's channels)
# stay with AdamW: orthogonalising a 3-column matrix would scale its few directions all alike.
MIN_MUON_SIDE = 8


@keras.saving.register_keras_serializable(package="diffusion_keras")
class KernelMuon(keras.optimizers.Muon):
    """Keras' Muon orthogonalises 2-D kernels only and hands 4-D ones to AdamW, and a U-Net is
    almost all convolutions. This one orthogonalises each convolution kernel as the (height x width x
    input channels, output channels) matrix it multiplies patches by, as Muon's reference code does
    for convolutions; biases, normalisation scales and class embeddings stay with AdamW."""

    def _should_use_adamw(self, variable):
        shape = tuple(variable.shape)
        if len(shape) not in (2, 4) or min(math.prod(shape[:-1]), shape[-1]) < MIN_MUON_SIDE:
            return True
        return "embedding" in variable.path.lower()  # rows looked up, not multiplied

    # Keras' Muon step (momentum, Newton-Schulz, update scale) unchanged, on the kernel as a matrix
    def zeropower_via_newtonschulz5(self, x, steps):
        return ops.reshape(super().zeropower_via_newtonschulz5(as_matrix(x), steps), x.shape)

    def lr_adjust(self, x):
        return ops.reshape(super().lr_adjust(as_matrix(x)), x.shape)


@keras.saving.register_keras_serializable(package="diffusion_keras")
class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` read per optimizer update rather than per batch: with gradient accumulation Keras
    calls a schedule with its batch counter, so a schedule sized in updates would run N times too
    fast (a cosine reaching 0 after 1/N of the run). At the update that ends batches kN..kN+N-1 this
    gives exactly `schedule(k)`."""

    def __init__(self, schedule, accumulate_steps):
        self.schedule = schedule
        self.accumulate_steps = accumulate_steps

    def __call__(self, step):
        return self.schedule(ops.floor_divide(step, self.accumulate_steps))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "accumulate_steps": self.accumulate_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]),
                   config["accumulate_steps"])


def as_matrix(kernel):
    """A kernel as the (fan in, fan out) matrix it multiplies by."""
    return ops.reshape(kernel, (-1, kernel.shape[-1]))


def build_optimizer(config, learning_rate=None):
    """An OptimizationConfig's optimizer, at `learning_rate` (a number or a schedule; default: the
    config's). Muon's updates are scaled to AdamW's size (Moonlight's rule, Keras' default), so the
    same learning rate and weight decay suit both."""
    options = {"learning_rate": config.learning_rate if learning_rate is None else learning_rate,
               "weight_decay": config.weight_decay,
               "global_clipnorm": config.clip_norm,
               "gradient_accumulation_steps": config.accumulate_steps
               if config.accumulate_steps > 1 else None}
    if config.optimizer == "muon":
        return KernelMuon(adam_weight_decay=config.weight_decay, **options)
    return keras.optimizers.AdamW(**options)
