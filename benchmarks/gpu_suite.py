"""What users ask first about a GPU, in one command of at most 8 minutes on one GPU (JAX), written
as one JSON-lines file and a short table.

Here, once: prepare the data (a CIFAR-10 subset that travels with the code) and the wheels the GPU
machine lacks (Keras and its two small dependencies; no TensorFlow):

    python benchmarks/gpu_suite.py --prepare /tmp/cifar/train

On the GPU machine, from the repository root (the device tool's `carry`: .gpu_data and .whl):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax python3 benchmarks/gpu_suite.py --data .gpu_data --output $OUT

In CI, every part at tiny sizes on the CPU (JAX, TensorFlow not needed): `--smoke --output DIR`.

Parts, in this order, each skipped (and said so) when the time left cannot hold it:
  speed     train images/s, step time, model-FLOP utilisation against --peak-tflops and device
            memory of the default, ddpm-cifar and 64px presets, mixed bfloat16 and float32
            (`bench.measure`: a fixed batch)
  sampling  10,000 images at 10 and 20 calls, and images/s against the sampling batch size
  real-data the default recipe through `training.train` on the prepared file for --real-steps
            steps: its step time against the fixed batch's
  quality   `time_to_quality.py` for --quality-minutes: FD-cifar10 of the default recipe, its
            sample grid copied beside the table
  distribute  real-data again with `--distribute` (keras.distribution over the one GPU); last,
            since it sets the process's distribution
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

# what the GPU machine's image lacks (the device tool's KINDS.md lists what it has); --prepare
# downloads them into .whl
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0")
DATA_IMAGES = 19_000  # 32 px CIFAR-10 images (58 MB) that fit beside the code in what travels
BUDGET_SECONDS = 8 * 60
H200_BF16_TFLOPS = 989.0  # dense bfloat16 peak, by the datasheet (an H100 SXM's too)
SPEED_RUNS = (("cifar", "mixed_bfloat16"), ("cifar", "float32"), ("ddpm-cifar", "mixed_bfloat16"),
              ("ddpm-cifar", "float32"), ("64px", "mixed_bfloat16"))
# seconds each part is expected to take on an H200, compilation included (a guess until the first
# run: a part starts only when this much of the budget is left); quality's adds its training minutes
PART_SECONDS = {"speed": 180, "sampling": 60, "real-data": 40, "quality": 50, "distribute": 40}
TINY = {"image_size": 16, "widths": (8, 16), "block_depth": 1, "embedding_dims": 8,
        "attention_resolutions": ()}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prepare", metavar="IMAGE_FOLDER",
                   help="make .gpu_data (a prepared CIFAR-10 subset) and .whl here, run nothing")
    p.add_argument("--data", default=".gpu_data", help="folder holding one prepared .u8 file")
    p.add_argument("--output", help="where the results go (default: a results folder)")
    p.add_argument("--smoke", action="store_true", help="every part at tiny sizes, on any device")
    p.add_argument("--budget-minutes", type=float, default=BUDGET_SECONDS / 60)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
    p.add_argument("--real-steps", type=int, default=300)
    p.add_argument("--quality-minutes", type=float, default=1.5)
    return p


def fail(message):
    sys.exit(f"error: {message}")


def prepare(folder):
    """The data subset into .gpu_data and the missing wheels into .whl (.gitignore lists both:
    the device tool carries ignored folders that its `carry` names)."""
    import subprocess

    from diffusion_keras.data import open_images

    shutil.rmtree(".gpu_data", ignore_errors=True)
    open_images(32, data_dir=folder, limit=DATA_IMAGES, seed=0, channels=3, cache_dir=".gpu_data")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[f"--platform={name}" for name in ("manylinux_2_28_x86_64",
                                                        "manylinux_2_17_x86_64",
                                                        "manylinux2014_x86_64")],
                    "-d", ".whl", *WHEELS], check=True)
    print("prepared .gpu_data and .whl; carry both to the GPU machine")


def check_pieces(args):
    """One line for a missing piece, before any work: Keras, JAX on a GPU, the data."""
    try:
        import keras
    except ModuleNotFoundError as error:
        fail(f"{error.name} is not installed: pip install --no-index --no-deps --target /tmp/site "
             ".whl/*.whl and PYTHONPATH=/tmp/site:. (made by --prepare)")
    if keras.backend.backend() != "jax":
        fail("the GPU suite runs on JAX: set KERAS_BACKEND=jax")
    import jax

    if not args.smoke and jax.devices()[0].platform != "gpu":
        fail(f"JAX sees no GPU (devices: {jax.devices()}); run on the GPU machine, or --smoke")
    if args.smoke:
        return None
    files = glob.glob(os.path.join(args.data, "*.u8"))
    if len(files) != 1:
        fail(f"{args.data} should hold one prepared .u8 file (found {len(files)}); make it with "
             "--prepare IMAGE_FOLDER here and carry the folder")
    from diffusion_keras.image_cache import open_prepared_file

    return files[0], open_prepared_file(files[0])


def smoke_data(folder):
    """A tiny prepared file of the demo images, for --smoke."""
    from diffusion_keras import demo_images
    from diffusion_keras.data import open_images

    demo_images.main([os.path.join(folder, "images"), "--count", "96", "--size", "16"])
    open_images(16, data_dir=os.path.join(folder, "images"), cache_dir=os.path.join(folder, "data"))
    [path] = glob.glob(os.path.join(folder, "data", "*.u8"))
    from diffusion_keras.image_cache import open_prepared_file

    return path, open_prepared_file(path)


def speed(args):
    from diffusion_keras import bench
    from diffusion_keras.config import PRESETS, ModelConfig, OptimizationConfig

    rows = []
    for preset, precision in SPEED_RUNS:
        model = ModelConfig().replace(**{**PRESETS[preset]["model"], **(TINY if args.smoke else {})})
        optimization = OptimizationConfig().replace(**PRESETS[preset]["optimization"])
        batch_size = 8 if args.smoke else optimization.batch_size
        row = bench.measure(model, batch_size, precision, train_steps=3 if args.smoke else 30,
                            sample_steps=2 if args.smoke else 20, optimization=optimization)
        for name in ("train", "sample"):  # three significant figures: tiny models are far below 1e-4
            row[f"{name}_mfu"] = float(f"{row[f'{name}_tflop_s'] / args.peak_tflops:.3g}")
        rows.append({"preset": preset, **row})
    return rows


def sampling(args):
    """Images/s of the default model's compiled loop: 10,000 images at 10 and 20 calls at the
    default sampling batch, and at 20 calls against the batch size."""
    import numpy as np

    from diffusion_keras import backend
    from diffusion_keras.config import ModelConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(**(TINY if args.smoke else {}), seed=0))
    model.normalizer.adapt(np.random.default_rng(0).random((64, *model.image_shape), "float32"))
    count = 32 if args.smoke else 10_000
    default_batch = backend.default_sample_batch_size()
    batches = (8, 16) if args.smoke else (64, 256, 1024, 2500)
    runs = [(calls, default_batch) for calls in ((2, 3) if args.smoke else (10, 20))]
    runs += [((3 if args.smoke else 20), batch) for batch in batches if batch != default_batch]
    rows = []
    for calls, batch_size in runs:
        batch_size = min(batch_size, count)  # what generate runs
        model.generate(batch_size, calls, seed=0, batch_size=batch_size, verbose=False)  # compile
        started = time.perf_counter()
        model.generate(count, calls, seed=0, batch_size=batch_size, verbose=False)
        seconds = time.perf_counter() - started
        rows.append({"calls": calls, "batch_size": batch_size, "images": count,
                     "seconds": round(seconds, 2), "sample_img_s": round(count / seconds, 1),
                     "default_batch": batch_size == default_batch})
    return rows


def stop_after(steps):
    """A callback that ends `fit` after `steps` batches, counted across epochs (Keras is imported
    here: the suite checks for it first)."""
    import keras

    done = [0]

    def count(batch, logs=None):
        done[0] += 1
        if done[0] >= steps:
            callback.model.stop_training = True

    callback = keras.callbacks.LambdaCallback(on_train_batch_end=count)
    return callback


def real_data(args, images, distribute=False):
    """The default recipe through `training.train` on the prepared file: seconds per step after
    the first 10 (compilation and warm-up), against the speed part's fixed batch."""
    from diffusion_keras import backend, bench, training
    from diffusion_keras.config import TrainingConfig

    steps = 6 if args.smoke else args.real_steps
    run_dir = tempfile.mkdtemp(prefix="gpu_suite_run_")
    shutil.rmtree(run_dir)
    config = TrainingConfig().updated({
        "model": TINY if args.smoke else {},
        "optimization": {"epochs": 100, "batch_size": 8 if args.smoke else 64},  # stop_after ends it
        "run": {"seed": 0, "run_dir": run_dir, "distribute": distribute, "validation_split": 0.0}})
    timer = bench.StepTimer()
    training.train(images, run_dir, config, verbose=0, callbacks=[timer, stop_after(steps)])
    step_ms = timer.seconds_per_step(skip=min(10, steps - 2)) * 1e3
    fixed = [row for row in args.rows if row["part"] == "speed" and row["preset"] == "cifar"
             and row["precision"] == backend.default_dtype_policy()]
    row = {"steps": len(timer.ends), "step_ms": round(step_ms, 2), "distribute": distribute,
           "precision": backend.default_dtype_policy()}
    if fixed:
        row["fixed_batch_step_ms"] = fixed[0]["train_step_ms"]
        row["real_over_fixed"] = round(step_ms / fixed[0]["train_step_ms"], 3)
    return [row]


def quality(args, data_file):
    """A short time-to-quality run of the default recipe through the product's path, its table
    and sample grid beside the suite's."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import time_to_quality

    runs_root = tempfile.mkdtemp(prefix="gpu_suite_runs_")
    minutes = 0.05 if args.smoke else args.quality_minutes
    time_to_quality.main([
        "--data-file", data_file, "--recipes", "default", "--minutes", str(minutes),
        "--eval-every", str(minutes / 2), "--num-images", "16" if args.smoke else "2000",
        "--steps", "10,20", "--name", "gpu-quality", "--results-root", args.output,
        "--runs-root", runs_root, *(["--widths", "8,16", "--batch-size", "8"] if args.smoke else [])])
    [folder] = glob.glob(os.path.join(args.output, "*-gpu-quality"))
    with open(os.path.join(folder, "rows.jsonl")) as file:
        rows = [json.loads(line) for line in file]
    grids = sorted(glob.glob(os.path.join(runs_root, "*", "samples", "*.png")))
    if grids:
        shutil.copy(grids[-1], os.path.join(args.output, "quality_samples.png"))
    return [{key: row[key] for key in ("recipe", "network", "spacing", "calls", "minutes", "steps",
                                       "fd_cifar10")} for row in rows if row["network"] != "reference"]


def table(rows):
    """The short table: one line per measurement, the figures users ask for first."""
    lines = ["| part | what | figures |", "|---|---|---|"]
    for row in rows:
        part = row["part"]
        if "skipped" in row:
            lines.append(f"| {part} | skipped | {row['skipped']} |")
        elif part == "speed":
            lines.append(f"| speed | {row['preset']}, {row['precision']}, batch {row['batch_size']} "
                         f"| train {row['train_img_s']} img/s ({row['train_step_ms']} ms/step, MFU "
                         f"{row['train_mfu']:.1%}), sample {row['sample_img_s']} img/s, device "
                         f"{row['device_peak_mib']} MiB |")
        elif part == "sampling":
            lines.append(f"| sampling | {row['calls']} calls, batch {row['batch_size']} | "
                         f"{row['sample_img_s']} img/s ({row['images']} in {row['seconds']} s) |")
        elif part in ("real-data", "distribute"):
            lines.append(f"| {part} | {row['steps']} steps, {row['precision']} | {row['step_ms']} "
                         f"ms/step; fixed batch {row.get('fixed_batch_step_ms')} ms "
                         f"({row.get('real_over_fixed')}x) |")
        elif part == "quality":
            lines.append(f"| quality | {row['recipe']} {row.get('network', '')} "
                         f"{row.get('calls', '')} calls | FD-cifar10 {row['fd_cifar10']:.3f} at "
                         f"{row.get('minutes', '')} min ({row.get('steps', '')} steps) |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    started = time.perf_counter()
    pieces = check_pieces(args)
    if args.output is None:
        from manifest import open_results

        args.output = open_results("gpu-suite-smoke" if args.smoke else "gpu-suite")
    os.makedirs(args.output, exist_ok=True)
    data_file, images = pieces or smoke_data(tempfile.mkdtemp(prefix="gpu_suite_data_"))
    budget = args.budget_minutes * 60
    args.rows = []
    parts = {"speed": lambda: speed(args), "sampling": lambda: sampling(args),
             "real-data": lambda: real_data(args, images), "quality": lambda: quality(args, data_file),
             "distribute": lambda: real_data(args, images, distribute=True)}
    path = os.path.join(args.output, "gpu_suite.jsonl")
    for name, part in parts.items():
        left = budget - (time.perf_counter() - started)
        expected = PART_SECONDS[name] + (args.quality_minutes * 60 if name == "quality" else 0)
        if not args.smoke and left < expected:
            rows = [{"skipped": f"{left:.0f} s of the budget left, the part takes about "
                                f"{expected:.0f} s"}]
        else:
            part_started = time.perf_counter()
            rows = part()
            print(f"{name}: {time.perf_counter() - part_started:.0f} s", flush=True)
        with open(path, "a") as file:  # as they come: a run cut short keeps what it measured
            for row in rows:
                args.rows.append({"part": name, **row})
                file.write(json.dumps(args.rows[-1]) + "\n")
    text = table(args.rows)
    with open(os.path.join(args.output, "gpu_suite.md"), "w") as file:
        file.write(text)
    print(text + f"\n{time.perf_counter() - started:.0f} s in all; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
