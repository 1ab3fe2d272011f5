"""Where every random number comes from: one seed per image, in documented, separate streams.

Image i of `generate(n, seed=s)` depends only on (s, i), as in EDM's generator: each image owns a
NumPy `SeedSequence(s, spawn_key=(i, stream))` per stream, so no stream shares state with another
image, another stream or another seed.
    INITIAL_NOISE  the image's starting noise, drawn by NumPy: the same on every backend, so
                   deterministic samplers give the same image for a seed on TensorFlow, JAX and
                   PyTorch (up to float rounding).
    STEP_NOISE     one seed pair per sampler step for its fresh noise (DDPM, DDIM with eta > 0),
                   drawn with `keras.random` inside the compiled loop: these draws are backend-specific
                   (the same seed gives other, equally valid, stochastic samples on another backend).
                   On PyTorch, Keras seeds a generator with the 32-bit sum of the pair, so two draws
                   among about 2^16 can meet by chance; on TensorFlow and JAX the pair is 64 bits.
    PAIR_NOISE     a reflow distillation's teacher pairs' noises (and labels): apart from every
                   image `generate` makes, so no sample starts from a noise a student trained on.
Training draws its noise from the model's `SeedGenerator`, restarted at every epoch from
`epoch_seed(seed, epoch)`, so a resumed epoch draws what an uninterrupted one did.
"""

import keras
import numpy as np
from keras import ops

INITIAL_NOISE, STEP_NOISE, EPOCH_NOISE, PAIR_NOISE = 0, 1, 2, 3


def fresh_seed():
    """A seed from the operating system's entropy, for an unseeded call: never drawn from a
    training random stream, which it would move."""
    return int(np.random.default_rng().integers(2**31 - 1))


def _stream(seed, index, stream):
    return np.random.SeedSequence(int(seed), spawn_key=(int(index), stream))


def _normals(seed, first, count, shape, stream):
    return np.stack([np.random.default_rng(_stream(seed, index, stream))
                     .standard_normal(shape, dtype=np.float32)
                     for index in range(first, first + count)])


def initial_noise(seed, first_image, count, shape):
    """Images first_image .. first_image + count - 1's starting noise: (count, *shape) float32."""
    return _normals(seed, first_image, count, shape, INITIAL_NOISE)


def pair_noise(seed, first_pair, count, shape):
    """Teacher pairs first_pair .. first_pair + count - 1's noises: (count, *shape) float32."""
    return _normals(seed, first_pair, count, shape, PAIR_NOISE)


def pair_stream(seed):
    """The seed of a run's pair labels (one draw for all pairs)."""
    return np.random.SeedSequence(int(seed), spawn_key=(PAIR_NOISE,))


def step_seeds(seed, first_image, count, steps):
    """The seed pairs of each image's fresh noise at each step: (steps, count, 2) int32 (the bits of
    uint32 values, which `keras.random` reads back as such)."""
    states = [_stream(seed, index, STEP_NOISE).generate_state(2 * steps)
              for index in range(first_image, first_image + count)]
    return np.stack(states).reshape(count, steps, 2).transpose(1, 0, 2).view(np.int32)


def epoch_seed(seed, epoch):
    """The (seed, counter) state a training epoch's SeedGenerator starts from."""
    return np.array([_stream(seed, epoch, EPOCH_NOISE).generate_state(1)[0] >> 1, 0])


class SeedPair(keras.random.SeedGenerator):
    """One given seed pair as a `keras.random` seed, usable inside a compiled loop.

    `keras.random` takes ints or SeedGenerators, not tensors, and a real SeedGenerator's state
    variable cannot be updated inside a traced loop; this one has no state, only the pair.
    """

    def __init__(self, seeds):  # no super().__init__: that would create the state variable
        self.seeds = ops.cast(seeds, "uint32")

    def next(self, ordered=True):
        return self.seeds


def per_image_normal(seeds, image_shape):
    """Standard normal noise for a batch, image j drawn from its own seed pair `seeds[j]`."""
    return ops.map(lambda pair: keras.random.normal(image_shape, seed=SeedPair(pair)), seeds)
