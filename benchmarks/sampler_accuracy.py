"""How close each sampler and time grid gets to the exact probability-flow ODE solution, per number
of network calls: on the Gaussian oracle (exact answer known) and, with --checkpoint, on a trained
model against its own converged (--reference-steps) solution.

    python benchmarks/sampler_accuracy.py --name sampler-accuracy-oracle
    python benchmarks/sampler_accuracy.py --checkpoint runs/X/checkpoints/best.keras \
        --name sampler-accuracy-cifar10

Oracle error: mean |sample - exact| over 4000 pixels of data N(0.5, 0.4^2) (normalised space).
Trained-model error: root mean square pixel difference ([0, 1] pixels) from the reference images
of the same seeds. Writes results.json and table.md beside a manifest in
benchmarks/results/<date>-<name>/. Heun makes 2 x steps - 1 calls, so it gets the largest odd
number of calls not above each column's. With --checkpoint, also reference.npz: the initial noise
and the converged images.
"""

import argparse
import json
import os
import sys

import numpy as np
from manifest import RESULTS_ROOT, open_results

from diffusion_keras.samplers import SAMPLERS

DETERMINISTIC = [name for name, sampler in SAMPLERS.items() if not sampler.is_stochastic({})]


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", default="5,10,20,50", help="network calls per sample (columns)")
    p.add_argument("--samplers", default=",".join(DETERMINISTIC))
    p.add_argument("--spacings", default="uniform,quadratic,karras,log_snr")
    p.add_argument("--schedules", default="offset_cosine,flow,cosine,linear",
                   help="oracle schedules (without --checkpoint)")
    p.add_argument("--checkpoint", help="a trained model: compare against its own converged solution")
    p.add_argument("--num-images", type=int, default=64, help="trained-model images per cell")
    p.add_argument("--reference-sampler", default="dpmpp3m")
    p.add_argument("--reference-steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="sampler-accuracy", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    return p


def oracle_errors(args, calls):
    from keras import ops

    from diffusion_keras import backend, gaussian_oracle, samplers, seeding
    from diffusion_keras.schedules import get_schedule, log_sigma_table

    noise = seeding.initial_noise(args.seed, 0, 8, (20, 25, 1))
    rows = []
    for schedule_name in args.schedules.split(","):
        schedule = get_schedule(schedule_name)
        table = log_sigma_table(schedule)
        exact = gaussian_oracle.ode_solution(schedule, noise)
        for sampler in args.samplers.split(","):
            for spacing in args.spacings.split(","):
                errors = {}
                for count in calls:
                    times = samplers.sampling_times(SAMPLERS[sampler].steps_for(count), spacing, table)
                    sample = samplers.get_sampler(sampler)
                    run = backend.compile_function(
                        lambda x, times=times, sample=sample, schedule=schedule: sample(
                            gaussian_oracle.denoise, x, times, schedule), [])
                    errors[count] = float(np.abs(ops.convert_to_numpy(run(noise)) - exact).mean())
                rows.append({"schedule": schedule_name, "sampler": sampler, "spacing": spacing,
                             "errors": errors})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_errors(args, calls):
    from diffusion_keras import runs

    model = runs.load_checkpoint(args.checkpoint)
    reference = model.generate(args.num_images, args.reference_steps, seed=args.seed,
                               sampler=args.reference_sampler, spacing="log_snr")
    # the seeded initial noise and the converged images, to measure other code against
    np.savez(os.path.join(args.folder, "reference.npz"),
             noise=model.initial_noise(args.num_images, args.seed), images=reference)
    rows = []
    for sampler in args.samplers.split(","):
        for spacing in args.spacings.split(","):
            errors = {}
            for count in calls:
                images = model.generate(args.num_images, SAMPLERS[sampler].steps_for(count), seed=args.seed,
                                        sampler=sampler, spacing=spacing)
                errors[count] = float(np.sqrt(np.mean(np.square(images - reference))))
            rows.append({"schedule": model.config.schedule, "sampler": sampler, "spacing": spacing,
                         "errors": errors})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown_table(rows, calls):
    """One row per schedule, sampler and grid; one column per number of network calls; the best
    grid of each sampler and column in bold."""
    lines = ["| schedule | sampler | grid | " + " | ".join(f"{count} calls" for count in calls) + " |",
             "|---|---|---|" + "---|" * len(calls)]
    best = {}
    for row in rows:
        for count in calls:
            key = (row["schedule"], row["sampler"], count)
            best[key] = min(best.get(key, np.inf), row["errors"][count])
    for row in rows:
        cells = []
        for count in calls:
            value = row["errors"][count]
            text = f"{value:.2e}"
            cells.append(f"**{text}**" if value == best[(row["schedule"], row["sampler"], count)]
                         else text)
        lines.append(f"| {row['schedule']} | {row['sampler']} | {row['spacing']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import runs

    calls = [int(value) for value in args.calls.split(",")]
    args.folder = open_results(args.name, args.results_root,
                               ["benchmarks/sampler_accuracy.py", *(argv or sys.argv[1:])])
    rows = model_errors(args, calls) if args.checkpoint else oracle_errors(args, calls)
    runs.write_json(os.path.join(args.folder, "results.json"), {"checkpoint": args.checkpoint, "calls": calls,
                                            "reference": [args.reference_sampler,
                                                          args.reference_steps],
                                            "rows": rows})
    with runs.atomic_write(os.path.join(args.folder, "table.md")) as temporary, \
            open(temporary, "w") as file:
        file.write(markdown_table(rows, calls))
    print(f"wrote {args.folder}: results.json, table.md, manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
