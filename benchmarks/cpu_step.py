"""Where the default training step's time goes on this CPU, against the keras-io reference's, timed
side by side in one run; sampling images/s against the batch size; and the host time `fit` adds
to a step (a trivial network, against many steps per execution).

    python benchmarks/cpu_step.py --reference ../shared/bench/reference_ddim.py

On the running KERAS_BACKEND: the reference before; the defaults (`bench.measure`, the automatic
precision); each default turned back towards the reference's recipe one at a time (float32; AdamW
instead of Muon; the noise embedding at the input instead of in every block; all three), and
mixed bfloat16 where it is not the pick; the reference after. Then the default model's compiled
sampling loop (20 DDIM calls) at each --sample-batches, and a trivial network's `fit` step at each
--steps-per-execution. One JSON line per measurement, into
benchmarks/results/<date>-<name>/rows.jsonl beside a manifest.
"""

import argparse
import json
import os
import sys
import time

from manifest import RESULTS_ROOT, open_results

# name -> (model settings, optimization settings) on top of the defaults
VARIANTS = {
    "default": ({}, {}),
    "float32": ({}, {"precision": "float32"}),
    "mixed-bfloat16": ({}, {"precision": "mixed_bfloat16"}),
    "adamw": ({}, {"optimizer": "adamw"}),
    "embedding-input": ({"embedding": "input"}, {}),
    "reference-like": ({"embedding": "input"}, {"optimizer": "adamw", "precision": "float32"}),
}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", help="the reference script (its TensorFlow training and sampling)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--sample-batches", default="16,32,64,128,256", help="'' for none")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--steps-per-execution", default="1,10,100")
    p.add_argument("--name", default="cpu-step", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    return p


def sampling_rates(batches, precision, steps=20, repeats=2):
    """Images/s of the default model's compiled 20-step DDIM loop at each batch size."""
    import numpy as np

    from diffusion_keras import bench
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.training import build_model

    model = build_model(ModelConfig(seed=0), OptimizationConfig(precision=precision))
    model.normalizer.adapt(np.random.default_rng(0).random((64, *model.image_shape), "float32"))
    rows = []
    for batch in batches:
        noise = model.initial_noise(batch, seed=0)

        def sample(noise=noise, batch=batch):
            model.generate(batch, steps, initial_noise=noise, sampler="ddim", batch_size=batch,
                           verbose=False)

        sample()  # compiles
        seconds = bench.timed(sample, repeats)
        rows.append({"part": "sampling", "precision": precision, "batch_size": batch,
                     "steps": steps, "sample_img_s": round(batch / seconds, 2)})
    return rows


def host_overhead(values, steps=300):
    """Seconds per `fit` step of a trivial network (8 px, one width of 4: its compute is nil) at
    each steps_per_execution: what the framework's host work costs a step."""
    import numpy as np

    from diffusion_keras import backend
    from diffusion_keras.config import ModelConfig, OptimizationConfig
    from diffusion_keras.data import ImageBatches
    from diffusion_keras.model import DiffusionModel
    from diffusion_keras.optimizers import build_optimizer

    rows = []
    images = np.random.default_rng(0).random((8 * steps, 8, 8, 3), dtype=np.float32)
    for value in values:
        model = DiffusionModel(ModelConfig(image_size=8, widths=(4,), block_depth=1,
                                           embedding_dims=4, seed=0), dtype="float32")
        model.normalizer.adapt(images[:64])
        model.compile(optimizer=build_optimizer(OptimizationConfig(optimizer="adamw"), 1e-3),
                      jit_compile=backend.default_jit_compile(), steps_per_execution=value)
        batches = ImageBatches(images, 8, seed=0)
        timings = []
        for _ in range(2):  # the first compiles
            started = time.perf_counter()
            model.fit(batches.fit_input(), steps_per_epoch=len(batches), epochs=1, verbose=0,
                      shuffle=False)
            timings.append(time.perf_counter() - started)
        rows.append({"part": "host", "steps_per_execution": value,
                     "ms_per_step": round(timings[-1] / len(batches) * 1e3, 3)})
    rows.append({"part": "host", "steps_per_execution": 1, "with": "training.train's callbacks",
                 "ms_per_step": round(train_step_ms(images, steps), 3)})
    return rows


def train_step_ms(images, steps):
    """Milliseconds per step (after ten) of the same trivial network trained by `training.train`
    (the run's callbacks: interrupts, divergence checks on every step's logs, ...)."""
    import tempfile

    from diffusion_keras import bench, training
    from diffusion_keras.config import TrainingConfig

    run_dir = os.path.join(tempfile.mkdtemp(prefix="cpu_step_"), "run")
    config = TrainingConfig().updated({
        "model": {"widths": (4,), "block_depth": 1, "embedding_dims": 4},
        "optimization": {"optimizer": "adamw", "batch_size": 8, "epochs": 1,
                         "precision": "float32"},
        "run": {"validation_split": 0.0, "seed": 0}})
    timer = bench.StepTimer()
    pixels = (images * 255).astype("uint8")
    training.train(pixels, run_dir, config, verbose=0, callbacks=[timer])
    return timer.seconds_per_step(skip=10) * 1e3


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import backend, bench
    from diffusion_keras.config import ModelConfig, OptimizationConfig

    folder = open_results(args.name, args.results_root,
                          ["benchmarks/cpu_step.py", *(argv or sys.argv[1:])])

    def record(row):
        row = {"backend": backend.BACKEND, **row}
        print(json.dumps(row), flush=True)
        with open(os.path.join(folder, "rows.jsonl"), "a") as file:
            file.write(json.dumps(row) + "\n")

    if args.reference:
        record({"part": "reference", "when": "before",
                **bench.run_reference(args.train_steps, args.reference)})
    for name in filter(None, args.variants.split(",")):  # '' for none
        model, optimization = VARIANTS[name]
        precision = optimization.get("precision") or backend.default_dtype_policy()
        row = bench.measure(ModelConfig(**model), 64, precision, args.train_steps,
                            optimization=OptimizationConfig(**optimization))
        record({"part": "train", "variant": name, **row})
    if args.reference:
        record({"part": "reference", "when": "after",
                **bench.run_reference(args.train_steps, args.reference)})
    for row in sampling_rates([int(b) for b in args.sample_batches.split(",") if b],
                              backend.default_dtype_policy()):
        record(row)
    for row in host_overhead([int(v) for v in args.steps_per_execution.split(",") if v]):
        record(row)
    print(f"wrote {folder}/rows.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
