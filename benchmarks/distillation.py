"""Few-call students against their teacher: FD-cifar10 and sampling speed at 1, 2, 4 (and 20) calls.

    python benchmarks/distillation.py --teacher runs/T/checkpoints/epoch_0003.keras \
        --student reflow=runs/R --student progressive=runs/P4,runs/P2,runs/P1 \
        --real-dir /tmp/cifar/train --num-images 2000

Every score is `evaluation.evaluate` (evaluate.py's path: `model.generate`, then the project's
CIFAR-10 classifier's features) of the same seeded images against the same reference. The teacher
is scored at `--reference-calls` (DPM-Solver++(2M), the target's yardstick) and at each student call
count with DPM-Solver++(2M) and DDIM (its best of the two is what a student must beat); each
student at the calls it was distilled for (its `student_calls`), with its own default sampler.
Images/s are timed in this one process, teacher and students alternately, after a warm-up each.
Writes results.json, table.md, fd_against_calls.png and grids.png (the same seeds in every row)
beside a manifest in benchmarks/results/<date>-<name>/. Not a test: it needs trained models.
"""

import argparse
import json
import os
import sys
import time

from manifest import RESULTS_ROOT, open_results

TEACHER_SAMPLERS = ("dpmpp2m", "ddim")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher's .keras file")
    p.add_argument("--student", action="append", default=[], metavar="NAME=RUN[,RUN...]",
                   help="a method's student run folders (or .keras files), repeatable")
    p.add_argument("--real-dir", required=True, help="folder of reference images")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--reference-calls", type=int, default=20)
    p.add_argument("--speed-images", type=int, default=256, help="images per timed generate")
    p.add_argument("--speed-repeats", type=int, default=2)
    p.add_argument("--name", default="distillation", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    return p


def images_per_second(model, steps, sampler, count, repeats):
    """The best of `repeats` timed `generate` calls of `count` images (after one warm-up)."""
    model.generate(min(count, 64), steps, seed=1, sampler=sampler, verbose=False)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        model.generate(count, steps, seed=1, sampler=sampler, verbose=False)
        best = max(best, count / (time.perf_counter() - started))
    return best


def plot_curves(rows, reference, path):
    from diffusion_keras.plotting import _figure, _finish

    figure, axis = _figure(figsize=(6, 4))
    for label in dict.fromkeys(row["label"] for row in rows):
        points = sorted((row["calls"], row["fd_cifar10"]) for row in rows if row["label"] == label)
        axis.plot(*zip(*points), marker="o", label=label)
    axis.axhline(reference, color="gray", linestyle=":", label="teacher, reference calls")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("network calls per image")
    axis.set_ylabel("FD-cifar10 (lower is better)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    _finish(figure, path)


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import runs
    from diffusion_keras.evaluation import evaluate
    from diffusion_keras.plotting import image_grid, plot_image_table

    folder = open_results(args.name, args.results_root,
                          ["benchmarks/distillation.py", *(argv or sys.argv[1:])])
    students = []  # (method, checkpoint)
    for entry in args.student:
        method, _, paths = entry.partition("=")
        students += [(method, runs.find_checkpoint(path)) for path in paths.split(",")]
    student_calls = sorted({calls for _, path in students
                            for calls in runs.saved_model_config(path).student_calls})
    settings = [("teacher dpmpp2m", args.teacher, "dpmpp2m", args.reference_calls)]
    settings += [(f"teacher {sampler}", args.teacher, sampler, calls)
                 for sampler in TEACHER_SAMPLERS for calls in student_calls]
    settings += [(f"student {method}", path, None, calls) for method, path in students
                 for calls in runs.saved_model_config(path).student_calls]
    rows, models = [], {}
    for label, path, sampler, calls in settings:
        sampling = {"sampler": sampler} if sampler else None
        result = evaluate(path, args.num_images, calls, data_dir=args.real_dir,
                          kid_images=min(args.num_images, 1000), features="cifar10",
                          sampling=sampling)
        if path not in models:
            models[path] = runs.load_checkpoint(path)
        rows.append({"label": label, "checkpoint": os.path.abspath(path), "calls": calls,
                     "sampler": result["sampler"], "spacing": result.get("spacing"),
                     "fd_cifar10": result["fd_cifar10"], "kd_cifar10": result["kd_cifar10"]})
        print(rows[-1], flush=True)
    for row in rows:  # timed after all scoring, one setting after another, nothing else running
        row["images_per_second"] = images_per_second(models[row["checkpoint"]], row["calls"],
                                                     row["sampler"], args.speed_images,
                                                     args.speed_repeats)
        print(row["label"], row["calls"], f"{row['images_per_second']:.1f} images/s", flush=True)
    reference = rows[0]
    for row in rows:
        row["fd_vs_reference"] = row["fd_cifar10"] / reference["fd_cifar10"]
        row["speed_vs_reference"] = row["images_per_second"] / reference["images_per_second"]
    with open(os.path.join(folder, "results.json"), "w") as file:
        json.dump({"teacher": os.path.abspath(args.teacher), "num_images": args.num_images,
                   "rows": rows}, file, indent=1)
    lines = ["| model | sampler | calls | FD-cifar10 | x reference | images/s | x reference |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['label']} | {row['sampler']} | {row['calls']} | {row['fd_cifar10']:.3f} | "
              f"{row['fd_vs_reference']:.2f} | {row['images_per_second']:.1f} | "
              f"{row['speed_vs_reference']:.1f} |" for row in rows]
    with open(os.path.join(folder, "table.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    plot_curves(rows[1:], reference["fd_cifar10"], os.path.join(folder, "fd_against_calls.png"))
    strips = [image_grid(models[row["checkpoint"]].generate(
        8, row["calls"], seed=0, sampler=row["sampler"], verbose=False), rows=1) / 255.0
        for row in rows]
    plot_image_table([strips], ["images 0-7 of seed 0"], "Teacher and students, the same noises",
                     os.path.join(folder, "grids.png"), size=1.0,
                     row_titles=[f"{row['label']}, {row['calls']} calls" for row in rows])
    print(f"wrote {folder}: results.json, table.md, fd_against_calls.png, grids.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
