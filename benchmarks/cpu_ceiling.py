"""How fast can this CPU go? The ceiling that bench.py's FLOP/s figures are read against.

python benchmarks/cpu_ceiling.py
Prints the float32 GFLOP/s of a large NumPy matrix product (the hardware's practical peak: BLAS
kernels come close to the FMA units' limit) and of TensorFlow's 3x3 convolution alone, forward and
forward + backward, at the default U-Net's shapes (batch 64): no whole model can run faster than
its own convolutions do in isolation. Best of several repeats, as throughput on a shared machine
only ever gets slower than the hardware allows.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = 64
SHAPES = ((32, 32), (16, 64), (8, 96), (4, 128))  # (side, channels) of the default U-Net's levels


def best_seconds(function, repeats=10):
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n=3072):
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    return 2 * n**3 / best_seconds(lambda: a @ a, repeats=5) / 1e9


def conv_gflops(side, channels):
    """(forward, forward + backward) GFLOP/s of one 3x3 convolution, channels -> channels."""
    x = tf.random.normal((BATCH, side, side, channels))
    kernel = tf.Variable(tf.random.normal((3, 3, channels, channels)))
    forward = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME"))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tape.gradient(total, [x, kernel])

    flops = 2 * BATCH * side * side * 9 * channels * channels
    return (flops / best_seconds(lambda: forward().numpy()) / 1e9,
            3 * flops / best_seconds(lambda: [g.numpy() for g in forward_backward()]) / 1e9)


def main():
    print(f"NumPy float32 matmul 3072x3072: {matmul_gflops():.0f} GFLOP/s")
    for side, channels in SHAPES:
        forward, forward_backward = conv_gflops(side, channels)
        print(f"TensorFlow 3x3 conv {side}x{side}x{channels}, batch {BATCH}: forward {forward:.0f}, "
              f"forward + backward {forward_backward:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
