"""Post-hoc EMA (Karras et al. 2024, EDM2): choose the EMA length after training, not before.

Training keeps, besides the usual EMA, power-function averages of the weights: after t optimizer
updates each is updated with momentum (1 - 1/t)^(gamma + 1), which weighs the past like
tau^gamma, a profile whose width relative to t is `sigma_rel` (`config.POSTHOC_EMA_WIDTHS`, two as
EDM2). Snapshots of both are saved a few times during the run (`EmaSnapshots`). Any other
relative width, at the last snapshot, is then a least-squares combination of the snapshots'
profiles (`coefficients`): `reconstruct` rebuilds it, `generate.py --ema-length` samples with it
and `evaluate.py --ema-length` sweeps lengths by FD.
"""

import glob
import os

import numpy as np

from diffusion_keras.config import MAX_EMA_LENGTH
from diffusion_keras.errors import UsageError

SNAPSHOT_DIR = "ema_snapshots"


def power(sigma_rel):
    """The power gamma whose profile tau^gamma on [0, t] has standard deviation sigma_rel * t:
    the largest real root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s), s = sigma_rel^-2."""
    if not 0 < sigma_rel < MAX_EMA_LENGTH:  # gamma = 0 (a flat profile) is the widest
        raise UsageError(f"EMA length {sigma_rel} must be in (0, {MAX_EMA_LENGTH:.3f}) (a share of "
                         "the training time, e.g. 0.05 to 0.25)")
    s = sigma_rel ** -2.0
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


def momentum(updates, gamma):
    """The power EMA's momentum at update number `updates` (1, 2, ...): (1 - 1/t)^(gamma + 1)."""
    return (1.0 - 1.0 / updates) ** (gamma + 1.0)


def profile_products(t_a, gamma_a, t_b, gamma_b):
    """Inner products of normalised power profiles ((gamma + 1) / t (tau / t)^gamma on [0, t]):
    (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) * (min / max)^(gamma of the longer) / max.
    Arguments broadcast."""
    t_a, gamma_a, t_b, gamma_b = np.broadcast_arrays(*(np.asarray(value, "float64") for value in
                                                       (t_a, gamma_a, t_b, gamma_b)))
    shorter_first = t_a <= t_b
    longest = np.maximum(t_a, t_b)
    exponent = np.where(shorter_first, gamma_b, gamma_a)
    ratio = np.minimum(t_a, t_b) / longest
    return ((gamma_a + 1.0) * (gamma_b + 1.0) / (gamma_a + gamma_b + 1.0)
            * ratio ** exponent / longest)


def coefficients(times, gammas, target_time, target_gamma):
    """Weights of the snapshots (power averages at update counts `times` with powers `gammas`)
    whose combination best matches, in least squares, the profile (target_time, target_gamma)."""
    times, gammas = np.asarray(times, "float64"), np.asarray(gammas, "float64")
    gram = profile_products(times[:, None], gammas[:, None], times[None, :], gammas[None, :])
    wanted = profile_products(times, gammas, target_time, target_gamma)
    return np.linalg.lstsq(gram, wanted, rcond=None)[0]


def snapshot_path(run_dir, updates):
    return os.path.join(run_dir, SNAPSHOT_DIR, f"updates_{int(updates):09d}.npz")


def snapshots(run_dir, up_to=None):
    """The run's snapshot files (oldest first), those after `up_to` updates left out."""
    paths = sorted(glob.glob(os.path.join(run_dir, SNAPSHOT_DIR, "updates_*.npz")))
    return [path for path in paths
            if up_to is None or int(os.path.basename(path)[8:-4]) <= up_to]


def reconstruct(run_dir, sigma_rel, up_to=None):
    """(the network weights of the EMA of relative length `sigma_rel` at the last snapshot, the
    update count it is at), from the run's snapshots (those up to `up_to` updates)."""
    paths = snapshots(run_dir, up_to)
    if not paths:
        raise UsageError(f"{run_dir!r} has no post-hoc EMA snapshots ({SNAPSHOT_DIR}/); train with "
                         "--posthoc-ema to keep them")
    times, gammas, arrays = [], [], []
    for path in paths:
        with np.load(path) as snapshot:
            count = len([name for name in snapshot.files if name.startswith("width0_")])
            for width, gamma in enumerate(snapshot["gammas"]):
                times.append(float(snapshot["updates"]))
                gammas.append(float(gamma))
                arrays.append([snapshot[f"width{width}_{index}"] for index in range(count)])
    weights = coefficients(times, gammas, times[-1], power(sigma_rel))
    combined = [sum(weight * snapshot[index] for weight, snapshot in zip(weights, arrays))
                for index in range(len(arrays[0]))]
    return [value.astype(arrays[0][index].dtype) for index, value in enumerate(combined)], \
        int(times[-1])


def snapshot_epochs(epochs, count):
    """The epochs (1-based) after which `count` snapshots spread evenly over `epochs` are saved."""
    return sorted({-(-epochs * number // count) for number in range(1, count + 1)})


def save_snapshot(model, run_dir):
    """The model's power averages now, as one snapshot file named by its update count."""
    from keras import ops

    from diffusion_keras import runs

    accumulate = getattr(model.optimizer, "gradient_accumulation_steps", None) or 1
    updates = int(ops.convert_to_numpy(model.training_steps)) // accumulate
    arrays = {f"width{width}_{index}": ops.convert_to_numpy(weight)
              for width, network in enumerate(model.power_ema_networks)
              for index, weight in enumerate(network.weights)}
    path = snapshot_path(run_dir, updates)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with runs.atomic_write(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, updates=updates, gammas=np.asarray(model.power_gammas),
                 widths=np.asarray(model.config.posthoc_ema), **arrays)
    return path


def run_folder(checkpoint):
    """The run folder a checkpoint lies in (the folder above its checkpoints/ folder)."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    return os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder


def check_length(checkpoint, sigma_rel):
    """One line, before any work, where the EMA of length `sigma_rel` cannot be rebuilt for the
    run of `checkpoint`."""
    power(sigma_rel)
    if not snapshots(run_folder(checkpoint)):
        raise UsageError(f"--ema-length rebuilds an EMA from the post-hoc EMA snapshots of a run, "
                         f"and {run_folder(checkpoint)!r} has none ({SNAPSHOT_DIR}/): train with "
                         "train.py --posthoc-ema, or drop --ema-length")


def use_length(model, checkpoint, sigma_rel):
    """Give `model` (loaded from `checkpoint`) the EMA of relative length `sigma_rel` as its "ema"
    network, rebuilt from its run's snapshots up to the checkpoint; returns the update count the
    rebuilt EMA is at (the last snapshot's)."""
    from keras import ops

    from diffusion_keras.config import read_config

    run_dir = run_folder(checkpoint)
    config_path = os.path.join(run_dir, "config.json")
    accumulate = (read_config(config_path).optimization.accumulate_steps
                  if os.path.isfile(config_path) else 1)
    updates = int(ops.convert_to_numpy(model.training_steps)) // accumulate
    weights, at = reconstruct(run_dir, sigma_rel, up_to=updates)
    model.ema_network.set_weights(weights)
    return at
