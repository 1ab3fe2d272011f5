import numpy as np
import pytest

from diffusion_keras.interpolation import interpolation_images, spherical_interpolation


def test_endpoints_are_the_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(spherical_interpolation(a, b, 0.0), a, atol=1e-6)
    np.testing.assert_allclose(spherical_interpolation(a, b, 1.0), b, atol=1e-6)


def test_slerp_keeps_the_norm_where_lerp_shrinks_it():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 4096)).astype("float32")
    path = spherical_interpolation(a, b, np.linspace(0, 1, 9))
    norms = np.linalg.norm(path, axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(a), rtol=0.03)
    assert np.linalg.norm((a + b) / 2) < 0.8 * np.linalg.norm(a)


def test_parallel_inputs_fall_back_to_linear():
    a = np.ones(5, "float32")
    np.testing.assert_allclose(spherical_interpolation(a, 2 * a, 0.5), 1.5 * a, rtol=1e-6)


def test_interpolation_strip_has_one_image_per_frame(trained_model):
    frames = interpolation_images(trained_model, num_frames=5, diffusion_steps=3, seed=0)
    assert frames.shape == (5, 16, 16, 3)
    assert not np.allclose(frames[0], frames[-1])


@pytest.mark.slow
def test_interpolation_ends_are_the_seeds_first_two_images_with_the_chosen_sampler(trained_model):
    for sampling in ({"sampler": "ddim", "spacing": "quadratic"}, {"sampler": "heun"}):
        frames = interpolation_images(trained_model, 3, 3, seed=4, **sampling)
        images = trained_model.generate(2, 3, seed=4, **sampling)
        np.testing.assert_allclose(frames[[0, -1]], images, atol=1e-4)  # batches of 3 and 2
    assert not np.allclose(frames, interpolation_images(trained_model, 3, 3, seed=4))
