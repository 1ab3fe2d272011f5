import numpy as np
import pytest
from keras import ops

from diffusion_keras.schedules import SCHEDULES, get_schedule, linear_alpha_bars

TIMES = np.linspace(0.0, 1.0, 101, dtype="float32")


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_rates_are_on_the_unit_circle_and_signal_decreases(name):
    noise_rates, signal_rates = map(ops.convert_to_numpy, get_schedule(name)(TIMES))
    np.testing.assert_allclose(noise_rates**2 + signal_rates**2, 1.0, atol=1e-5)
    assert np.all(np.diff(signal_rates) <= 1e-7)
    assert np.all(np.diff(noise_rates) >= -1e-7)
    assert signal_rates[0] > 0.9 and signal_rates[-1] < 0.1
    assert np.all(signal_rates > 0), "denoising divides by the signal rate"


def test_linear_schedule_matches_discrete_ddpm_steps():
    alpha_bars = ops.convert_to_numpy(linear_alpha_bars())
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(alpha_bars[1:], np.cumprod(1 - betas), rtol=1e-4)
    steps = np.array([0, 1, 10, 500, 1000])
    _, signal_rates = get_schedule("linear")(steps / 1000.0)
    np.testing.assert_allclose(ops.convert_to_numpy(signal_rates) ** 2, alpha_bars[steps], rtol=1e-4)


def test_offset_cosine_hits_its_configured_endpoints():
    _, signal_rates = get_schedule("offset_cosine")(np.array([0.0, 1.0]))
    np.testing.assert_allclose(ops.convert_to_numpy(signal_rates), [0.95, 0.02], atol=1e-6)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="offset_cosine"):
        get_schedule("quadratic")
