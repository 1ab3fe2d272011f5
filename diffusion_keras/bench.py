"""The performance record: training and sampling throughput, memory and FLOP/s of one configuration.

python bench.py [--precision mixed_bfloat16] [--compare-reference] [--peak-tflops T]   (any KERAS_BACKEND)
Prints one JSON line per measurement and a readable table. Timings are steady state: every
compiled function runs once before the clock starts.
"""

import json
import os
import re
import resource
import subprocess
import sys
import time

import keras
import numpy as np

from diffusion_keras import backend
from diffusion_keras.cli import Parser, int_list, positive_float, positive_int
from diffusion_keras.config import ModelConfig, OptimizationConfig
from diffusion_keras.data import ImageBatches
from diffusion_keras.training import build_model

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                         "shared", "bench", "reference_ddim.py")


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


def measure(image_size=32, batch_size=64, widths=(32, 64, 96, 128), block_depth=2,
            precision="float32", train_steps=20, sample_steps=20, sample_batch_size=None, seed=0):
    """Throughput of one configuration on the running backend, as a dict."""
    warm_up_steps = 2  # the first step compiles; the second may still settle
    keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig(image_size=image_size, widths=widths, block_depth=block_depth, seed=seed),
                        OptimizationConfig(precision=precision))
    images = np.random.default_rng(seed).random(
        (batch_size * (train_steps + warm_up_steps), image_size, image_size, 3), dtype=np.float32)
    model.normalizer.adapt(images[:batch_size])
    timer = StepTimer()
    batches = ImageBatches(images, batch_size, seed=seed)
    model.fit(backend.as_fit_input(batches), epochs=1, verbose=0, steps_per_epoch=len(batches),
              shuffle=False,
              callbacks=[timer])
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
        "image_size": image_size, "batch_size": batch_size, "widths": list(widths),
        "block_depth": block_depth, "params": model.network.count_params(),
        "train_img_s": round(train_images_per_second, 2),
        "sample_steps": sample_steps, "sample_batch_size": sample_batch_size,
        "sample_img_s": round(sample_images_per_second, 2),
        "forward_gflops_per_image": round(flops / 1e9, 4),
        # Training costs about three forward passes: the forward, and twice that backward.
        "train_tflop_s": round(3 * flops * train_images_per_second / 1e12, 4),
        "sample_tflop_s": round(sample_steps * flops * sample_images_per_second / 1e12, 4),
        **peak_memory(),
    }


def run_reference(steps, path=REFERENCE):
    """The keras-io reference's images/second, measured now in a fresh process."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference benchmark {path} not found; pass --reference PATH")
    output = subprocess.run([sys.executable, path, str(steps)], capture_output=True, text=True,
                            check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"}).stdout
    return {key: float(value) for key, value in re.findall(r"(ref_\w+)=([\d.]+)", output)}


def table(rows):
    columns = ["backend", "precision", "batch_size", "params", "train_img_s", "sample_img_s",
               "train_tflop_s", "train_mfu", "host_peak_mib", "device_peak_mib"]
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(str(row.get(column)) for column in columns) for row in rows]
    return "\n".join(lines)


def parser():
    p = Parser(description="Measure training and sampling speed of a diffusion_keras model.")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--widths", type=int_list, default=[32, 64, 96, 128])
    p.add_argument("--block-depth", type=positive_int, default=2)
    p.add_argument("--precision", default=backend.default_dtype_policy(),
                   choices=["float32", "mixed_bfloat16", "mixed_float16"],
                   help="Keras dtype policy (default: this backend and machine's fastest)")
    p.add_argument("--train-steps", type=positive_int, default=20, help="timed training steps")
    p.add_argument("--sample-steps", type=positive_int, default=20, help="DDIM steps per sample")
    p.add_argument("--sample-batch-size", type=positive_int, help="default: --batch-size")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time ../shared/bench/reference_ddim.py (before and after) and print "
                        "the speed-up ratios against its mean")
    p.add_argument("--reference", default=REFERENCE, help="path of the reference script")
    p.add_argument("--peak-tflops", type=positive_float,
                   help="the hardware's dense peak in the precision used (H100 SXM bfloat16: "
                        "989); adds the model-FLOP utilisation of training and sampling")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    rows = []
    if args.compare_reference:
        before = run_reference(args.train_steps, args.reference)
    row = measure(args.image_size, args.batch_size, args.widths, args.block_depth, args.precision,
                  args.train_steps, args.sample_steps, args.sample_batch_size)
    if args.compare_reference:
        # timed before and after this run: a shared 2-core machine drifts by 10-20% in minutes
        after = run_reference(args.train_steps, args.reference)
        reference = {key: round((before[key] + after[key]) / 2, 2) for key in before}
        print(json.dumps({"reference_before": before, "reference_after": after}), flush=True)
        row["train_vs_reference"] = round(row["train_img_s"] / reference["ref_train_img_s"], 2)
        row["sample_vs_reference"] = round(row["sample_img_s"] / reference["ref_sample_img_s"], 2)
    if args.peak_tflops is not None:
        row["train_mfu"] = round(row["train_tflop_s"] / args.peak_tflops, 3)
        row["sample_mfu"] = round(row["sample_tflop_s"] / args.peak_tflops, 3)
    print(json.dumps(row), flush=True)
    rows.append(row)
    print(table(rows))
    if args.compare_reference:
        print(f"speed-up over the reference: training {row['train_vs_reference']}x, "
              f"20-step sampling {row['sample_vs_reference']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
