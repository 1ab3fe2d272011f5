"""The performance record: training and sampling throughput, memory and FLOP/s of one configuration
(`python bench.py`, see `cli/bench.py`). Timings are steady state: every compiled function runs
once before the clock starts.
"""

import os
import re
import resource
import subprocess
import sys
import time

import keras
import numpy as np

from diffusion_keras import backend, quiet
from diffusion_keras.config import ModelConfig, OptimizationConfig
from diffusion_keras.data import ImageBatches
from diffusion_keras.training import build_model


def forward_flops_per_image(network):
    """Multiply-adds x 2 of every convolution and dense layer, for one image (the dominant cost)."""
    flops = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, out_channels = layer.output.shape[1:]
            kernel_height, kernel_width, in_channels, _ = layer.kernel.shape
            flops += 2 * height * width * out_channels * kernel_height * kernel_width * in_channels
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * int(np.prod(layer.kernel.shape)) * int(np.prod(layer.output.shape[1:-1]))
    return flops


def peak_memory():
    """Peak host memory (MiB) of this process, and of the accelerator where there is one."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"host_peak_mib": round(host, 1), "device_peak_mib": backend.device_peak_memory_mib()}


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of each training batch, so epoch start-up and compilation stay out."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def seconds_per_step(self, skip):
        return (self.ends[-1] - self.ends[skip]) / (len(self.ends) - 1 - skip)


def timed(function, repeats):
    """Seconds per call of `function` after one warm-up call."""
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def measure(model_config=ModelConfig(), batch_size=64, precision="float32", train_steps=20,
            sample_steps=20, sample_batch_size=None, seed=0, optimization=OptimizationConfig()):
    """Throughput of one configuration on the running backend, as a dict: `model_config` (image
    size, widths... as a preset gives them) trained with `optimization` at `batch_size`."""
    warm_up_steps = 2  # the first step compiles; the second may still settle
    quiet.set_random_seed(seed)
    model_config = model_config.replace(seed=seed)
    image_size, channels = model_config.image_size, model_config.channels
    model = build_model(model_config, optimization.replace(precision=precision,
                                                           batch_size=batch_size))
    images = np.random.default_rng(seed).random(
        (batch_size * (train_steps + warm_up_steps), image_size, image_size, channels),
        dtype=np.float32)
    model.normalizer.adapt(images[:batch_size])
    timer = StepTimer()
    batches = ImageBatches(images, batch_size, seed=seed)
    model.fit(batches.fit_input(), epochs=1, verbose=0, steps_per_epoch=len(batches),
              shuffle=False, callbacks=[timer])
    train_seconds = timer.seconds_per_step(skip=warm_up_steps - 1)
    sample_batch_size = sample_batch_size or batch_size
    noise = model.initial_noise(sample_batch_size, seed=seed)

    def sample():
        model.generate(sample_batch_size, sample_steps, initial_noise=noise, sampler="ddim",
                       verbose=False)  # DDIM, as the reference samples

    sample()  # the first runs after compiling are still slow on TensorFlow
    sample_seconds = timed(sample, 2)
    flops = forward_flops_per_image(model.network)
    train_images_per_second = batch_size / train_seconds
    sample_images_per_second = sample_batch_size / sample_seconds
    return {
        "backend": backend.BACKEND, "device": backend.device_name(), "precision": precision,
        "image_size": image_size, "batch_size": batch_size, "widths": list(model_config.widths),
        "block_depth": model_config.block_depth, "params": model.network.count_params(),
        "train_img_s": round(train_images_per_second, 2), "train_step_ms": round(train_seconds * 1e3, 2),
        "sample_steps": sample_steps, "sample_batch_size": sample_batch_size,
        "sample_img_s": round(sample_images_per_second, 2),
        "forward_gflops_per_image": round(flops / 1e9, 4),
        # Training costs about three forward passes: the forward, and twice that backward.
        "train_tflop_s": round(3 * flops * train_images_per_second / 1e12, 4),
        "sample_tflop_s": round(sample_steps * flops * sample_images_per_second / 1e12, 4),
        **peak_memory(),
    }


def run_reference(steps, path):
    """A reference script's images/second (it prints ref_train_img_s=..., ref_sample_img_s=...),
    measured now in a fresh process on TensorFlow."""
    output = subprocess.run([sys.executable, path, str(steps)], capture_output=True, text=True,
                            check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"}).stdout
    return {key: float(value) for key, value in re.findall(r"(ref_\w+)=([\d.]+)", output)}


def table(rows):
    columns = ["backend", "precision", "batch_size", "params", "train_img_s", "sample_img_s",
               "train_tflop_s", "train_mfu", "host_peak_mib", "device_peak_mib"]
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(str(row.get(column)) for column in columns) for row in rows]
    return "\n".join(lines)
