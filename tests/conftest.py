"""Shared fixtures: tiny image folders and tiny models, so the suite runs in minutes on 2 cores."""

import os
import subprocess
import sys
import tempfile

import pytest

from diffusion_keras.demo_images import write_shapes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# prepared images and reference statistics go to a throwaway cache, not the user's ~/.cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="diffusion_keras_test_cache_")
# JAX's compiled programs, shared by every test process of one run (xdist workers and the JAX
# processes they start), however short they took to compile: the tiny models compile in seconds
RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                       f"diffusion_keras_test_jax_{RUN}")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# a program's first lines that make TensorFlow absent, as on a machine without it: its imports fail
# and find_spec finds nothing (`python -c NO_TENSORFLOW + "...the program..."`)
NO_TENSORFLOW = """
import importlib.util
import sys

def absent(name):
    return name.split(".")[0] in ("tensorflow", "tensorflow_datasets")

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if absent(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if absent(name) else find_spec(name, package))
"""
TINY = {"image_size": 16, "widths": (8, 16), "block_depth": 1, "embedding_dims": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_backend(backend, code, timeout=900):
    """Python `code` in a new process on Keras `backend`, from the repository root (so it can
    import `tests.*`); its failure fails the test with the process's error output."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "KERAS_BACKEND": backend},
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """48 coloured squares on gradients, 20 pixels, in two class sub-folders, PNG and JPEG."""
    return write_shapes(tmp_path_factory.mktemp("images"), count=48, size=20)


@pytest.fixture(scope="session")
def tiny_images(tiny_folder):
    from diffusion_keras.data import load_image_folder, preprocess

    return preprocess(load_image_folder(str(tiny_folder), TINY["image_size"]))


@pytest.fixture(scope="session")
def trained_model(tiny_images):
    """A tiny model fitted for a few epochs (shared: several tests only read it)."""
    import keras

    from diffusion_keras import DiffusionModel
    from diffusion_keras.data import ImageBatches

    keras.utils.set_random_seed(0)
    model = DiffusionModel(channels=3, seed=0, **TINY)
    model.normalizer.adapt(tiny_images)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4))
    model.fit_history = model.fit(ImageBatches(tiny_images, 16, seed=0), epochs=8, verbose=0).history
    return model


# Fixtures that train through the command line or in other processes: every test that uses one is
# slow (the fast suite, `pytest -m "not slow"`, runs in about a minute).
SLOW_FIXTURES = {"trained_run", "reference", "finished_run", "single", "resumed", "two_device_run",
                 "per_backend_images", "muon_model"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
