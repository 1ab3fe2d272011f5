"""Walking the latent space: spherical interpolation between initial noises."""

import numpy as np


def spherical_interpolation(a, b, t):
    """Slerp (Shoemake 1985) from `a` (t = 0) to `b` (t = 1), keeping the norm of Gaussian noise.

    Linear interpolation would shrink the noise towards the origin mid-way, where the model has
    never seen samples; slerp follows the sphere the noise lives on. `t` may be a scalar or a 1-D
    array, giving one result per entry.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scalar = np.ndim(t) == 0
    t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * a.ndim)
    cos_angle = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    angle = np.arccos(np.clip(cos_angle, -1.0, 1.0))
    if angle < 1e-6:  # (nearly) parallel: slerp tends to lerp
        result = (1.0 - t) * a + t * b
    else:
        result = (np.sin((1.0 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)
    result = result.astype(np.float32)
    return result[0] if scalar else result


def interpolation_images(model, num_frames=8, diffusion_steps=20, seed=0, **sampling):
    """Images along the slerp between the noises of images 0 and 1 of `seed` (so the ends are
    `generate`'s first two images for that seed), as (num_frames, H, W, C) in [0, 1]; `sampling`:
    `generate`'s sampler, spacing and options."""
    start, end = model.initial_noise(2, seed)
    noises = spherical_interpolation(start, end, np.linspace(0.0, 1.0, num_frames))
    return model.generate(num_frames, diffusion_steps, initial_noise=noises, seed=seed,
                          verbose=False, **sampling)
