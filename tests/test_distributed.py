"""Data-parallel training on JAX over two fake CPU devices matches one device (a class-conditional
model, so labels travel with the sharded batches, trained with augmentation and post-hoc EMA, so
the pipe's draws and the power averages are sharded too); other backends refuse."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from diffusion_keras import backend, distributed
from diffusion_keras.cli import train
from diffusion_keras.errors import UsageError

pytestmark = pytest.mark.slow  # trains through the command line or in other processes

TWO_DEVICES = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    from diffusion_keras import distributed, training
    from diffusion_keras.config import TrainingConfig

    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    classes = {"labels": np.arange(40) % 2, "class_names": ("odd", "even")}  # class-conditional
    config = TrainingConfig().updated({
        "model": {"widths": (8, 16), "block_depth": 1, "embedding_dims": 8, "augment": 0.5,
                  "posthoc_ema": (0.05, 0.1)},
        "optimization": {"epochs": 1, "batch_size": 8},
        "run": {"validation_split": 0.2, "seed": 3, "conditional": True}})

    def weights(model):
        return [np.asarray(w) for network in [model.network, model.ema_network,
                                              *model.power_ema_networks] for w in network.weights]

    single = training.train(images, sys.argv[1] + "/single", config, verbose=0, **classes)
    one_device = single.generate(6, 5, seed=1, verbose=False, labels=1, guidance=2.0)
    double = training.train(images, sys.argv[1] + "/double",
                            config.updated({"run": {"distribute": True}}), verbose=0, **classes)
    two_devices = double.generate(6, 5, seed=1, verbose=False, labels=1, guidance=2.0)
    replicas = [[np.asarray(shard.data) for shard in w.value.addressable_shards]
                for w in double.network.weights + double.ema_network.weights]
    print(json.dumps({
        "devices": distributed.device_count(),
        "steps": float(np.asarray(double.training_steps)),
        "weight_gap": max(float(np.abs(a - b).max()) for a, b in zip(weights(single),
                                                                     weights(double))),
        "replica_gap": max(float(np.abs(r[0] - r[1]).max()) for r in replicas),
        "replicas": min(len(r) for r in replicas),
        "moved": max(float(np.abs(a).max()) for a in weights(double)[:3]),
        "image_gap": float(np.abs(one_device - two_devices).max()),
        "files": sorted(os.listdir(sys.argv[1] + "/double")),
    }))
""")


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    environment = {**os.environ, "KERAS_BACKEND": "jax",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(folder)], env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_devices_train_like_one_with_the_same_global_batch(two_device_run):
    run = two_device_run
    assert run["devices"] == 2 and run["replicas"] == 2
    assert run["steps"] == 4  # 32 training images, global batch 8
    assert run["moved"] > 0  # the weights were trained, so the comparison means something
    assert run["weight_gap"] < 1e-4, "online and EMA weights match the single-device run"
    assert run["replica_gap"] == 0.0, "every device holds identical weights"


def test_sampling_split_over_two_devices_gives_the_same_images(two_device_run):
    assert two_device_run["image_gap"] < 1e-3
    assert {"checkpoints", "config.json", "log.csv", "samples"} <= set(two_device_run["files"])


@pytest.mark.skipif(backend.BACKEND == "jax", reason="JAX supports --distribute")
def test_distribute_on_another_backend_is_refused_in_one_line(tmp_path, capsys):
    code = train.main(["--distribute", "--data-dir", str(tmp_path), "--run-dir",
                       str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "JAX backend only" in error and "KERAS_BACKEND=jax" in error
    assert not (tmp_path / "run").exists()


def test_pytorch_is_refused_too(monkeypatch):
    monkeypatch.setattr(backend, "BACKEND", "torch")
    with pytest.raises(UsageError, match="JAX backend only.*this is torch"):
        distributed.check_supported()
