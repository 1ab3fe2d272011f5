"""python bench.py [--precision P] [--compare-reference SCRIPT] [--peak-tflops T] (any KERAS_BACKEND):
training and sampling images/second, FLOP/s and memory of one configuration, as one JSON line per
measurement and a readable table (`diffusion_keras.bench`)."""

import json
import os
import sys

from diffusion_keras.checks import (
    positive_float_argument,
    positive_int_argument,
    positive_int_list_argument,
)
from diffusion_keras.cli import Parser, run
from diffusion_keras.config import PRECISIONS
from diffusion_keras.errors import UsageError


def parser():
    p = Parser(description="Measure training and sampling speed of a diffusion_keras model.")
    p.add_argument("--image-size", type=positive_int_argument, default=32)
    p.add_argument("--batch-size", type=positive_int_argument, default=64)
    p.add_argument("--widths", type=positive_int_list_argument, default=[32, 64, 96, 128])
    p.add_argument("--block-depth", type=positive_int_argument, default=2)
    p.add_argument("--precision", choices=PRECISIONS,
                   help="Keras dtype policy (default: this backend and machine's fastest)")
    p.add_argument("--train-steps", type=positive_int_argument, default=20, help="timed training steps")
    p.add_argument("--sample-steps", type=positive_int_argument, default=20, help="DDIM steps per sample")
    p.add_argument("--sample-batch-size", type=positive_int_argument, help="default: --batch-size")
    p.add_argument("--compare-reference", metavar="SCRIPT",
                   help="also time this reference script (it prints ref_train_img_s=... and "
                        "ref_sample_img_s=...; the keras-io DDIM one on this project's machines) "
                        "before and after, and print the ratios against its mean")
    p.add_argument("--peak-tflops", type=positive_float_argument,
                   help="the hardware's dense peak in the precision used (H100 SXM bfloat16: "
                        "989); adds the model-FLOP utilisation of training and sampling")
    return p


def bench_from_args(args):
    from diffusion_keras import backend, bench
    from diffusion_keras.config import ModelConfig

    model_config = ModelConfig(image_size=args.image_size, widths=args.widths,  # bad sizes: one
                               block_depth=args.block_depth)  # line, before any work
    if args.compare_reference and not os.path.isfile(args.compare_reference):
        raise UsageError(f"reference script {args.compare_reference!r} does not exist; pass the "
                         "path of one that prints ref_train_img_s=... and ref_sample_img_s=...")
    precision = args.precision or backend.default_dtype_policy()
    if args.compare_reference:
        before = bench.run_reference(args.train_steps, args.compare_reference)
    row = bench.measure(model_config, args.batch_size, precision, args.train_steps,
                        args.sample_steps, args.sample_batch_size)
    if args.compare_reference:
        # timed before and after this run: a shared 2-core machine drifts by 10-20% in minutes
        after = bench.run_reference(args.train_steps, args.compare_reference)
        reference = {key: round((before[key] + after[key]) / 2, 2) for key in before}
        print(json.dumps({"reference_before": before, "reference_after": after}), flush=True)
        row["train_vs_reference"] = round(row["train_img_s"] / reference["ref_train_img_s"], 2)
        row["sample_vs_reference"] = round(row["sample_img_s"] / reference["ref_sample_img_s"], 2)
    if args.peak_tflops is not None:
        row["train_mfu"] = round(row["train_tflop_s"] / args.peak_tflops, 3)
        row["sample_mfu"] = round(row["sample_tflop_s"] / args.peak_tflops, 3)
    print(json.dumps(row), flush=True)
    print(bench.table([row]))
    if args.compare_reference:
        print(f"speed-up over the reference: training {row['train_vs_reference']}x, "
              f"20-step sampling {row['sample_vs_reference']}x")
    return 0


def main(argv=None):
    return run(bench_from_args, parser().parse_args(argv), what="measuring")


if __name__ == "__main__":
    sys.exit(main())
