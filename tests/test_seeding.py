"""One seed per image: image i depends only on (seed, i) and the sampler settings, on every backend,
and the random streams never meet."""

import json

import keras
import numpy as np
import pytest

from diffusion_keras import checks, seeding
from diffusion_keras.errors import UsageError
from tests.conftest import run_on_backend

SHAPE = (4, 4, 1)


def test_each_image_owns_its_streams_whatever_the_range_asked_for():
    np.testing.assert_array_equal(seeding.initial_noise(5, 3, 2, SHAPE),
                                  seeding.initial_noise(5, 0, 5, SHAPE)[3:])
    np.testing.assert_array_equal(seeding.step_seeds(5, 3, 2, 30),
                                  seeding.step_seeds(5, 0, 5, 30)[:, 3:])


def test_no_two_streams_collide():
    pairs = np.concatenate([seeding.step_seeds(seed, 0, 40, 50).reshape(-1, 2) for seed in (5, 6)])
    assert len(np.unique(pairs, axis=0)) == len(pairs) == 4000
    # PyTorch seeds its generator with the 32-bit sum of the pair: those must differ too
    sums = pairs.view(np.uint32).astype(np.uint64).sum(axis=1) % 2**32
    assert len(np.unique(sums)) == len(sums)
    # the neighbours that met before: (seed, image + 1) against (seed + 1, image), and step k + 1
    # of one image against step k of the next
    assert not np.allclose(seeding.initial_noise(5, 1, 1, SHAPE), seeding.initial_noise(6, 0, 1, SHAPE))
    seeds = seeding.step_seeds(5, 0, 2, 3)
    assert not np.array_equal(seeds[1, 0], seeds[0, 1])
    # a step's fresh noise is not the starting noise (they came from one seed pair before)
    from keras import ops

    fresh = ops.convert_to_numpy(seeding.per_image_normal(seeds[0], SHAPE))
    assert not np.allclose(fresh, seeding.initial_noise(5, 0, 2, SHAPE), atol=0.1)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seeds_are_rejected(seed):
    with pytest.raises(UsageError, match="non-negative integer"):
        checks.seed(seed)


def images_for_every_setting(checkpoint, output):
    """On the running backend: each sampler's images 0-2 of seed 7, asked for as 3 images in batches
    of 2 and as 5 images in batches of 4; saved to `output` (.npz) for the caller to compare."""
    from diffusion_keras.runs import load_checkpoint

    model = load_checkpoint(checkpoint)
    results = {}
    for name, options in (("dpmpp2m", {}), ("ddpm", {}), ("ddim", {"eta": 0.5})):
        few = model.generate(3, 3, seed=7, batch_size=2, sampler=name, **options)
        many = model.generate(5, 3, seed=7, batch_size=4, sampler=name, **options)[:3]
        results[f"{name}_few"], results[f"{name}_many"] = few, many
    np.savez(output, **results)


@pytest.fixture(scope="module")
def per_backend_images(trained_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    checkpoint = str(folder / "model.keras")
    trained_model.save(checkpoint)
    images = {}
    for backend in ("tensorflow", "jax", "torch"):
        output = str(folder / f"{backend}.npz")
        if backend == keras.backend.backend():  # this process's backend: no new process
            images_for_every_setting(checkpoint, output)
        else:
            code = (f"from tests.test_seeding import images_for_every_setting; "
                    f"images_for_every_setting({json.dumps(checkpoint)}, {json.dumps(output)})")
            run_on_backend(backend, code)
        images[backend] = dict(np.load(output))
    return images


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_images_do_not_depend_on_batch_size_or_count(per_backend_images, backend):
    images = per_backend_images[backend]
    for name in ("dpmpp2m", "ddpm", "ddim"):
        np.testing.assert_allclose(images[f"{name}_few"], images[f"{name}_many"], atol=1e-5,
                                   err_msg=f"{backend} {name}")
    assert not np.allclose(images["ddpm_few"], images["dpmpp2m_few"], atol=1e-3)


def test_deterministic_samplers_give_the_same_images_on_every_backend(per_backend_images):
    reference = per_backend_images["tensorflow"]["dpmpp2m_few"]
    for backend in ("jax", "torch"):
        np.testing.assert_allclose(per_backend_images[backend]["dpmpp2m_few"], reference, atol=1e-4,
                                   err_msg=backend)
