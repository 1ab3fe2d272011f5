"""Training on a small folder: over-fitting with and without augmentation, post-hoc EMA, fine-tuning.

    python benchmarks/own_images.py --train-dir SMALL --held-out-dir HELD_OUT \
        --init-from runs/CIFAR/checkpoints/epoch_0003.keras --epochs 70 --augment 0.12

Up to three runs (`--arms`) of train.py on the same `--train-dir` images for the same epochs (so
the same steps): from scratch, from scratch with `--augment`, and fine-tuned `--init-from` a model
trained on the full dataset; all with `--posthoc-ema` and no validation split. A run folder that
already has checkpoints under `--runs-root` is scored as it is, not retrained. Each run's last checkpoint is
scored by `evaluation.evaluate` (evaluate.py's path) against the training images (with the
memorisation check, `--nearest`) and against `--held-out-dir` (images of the same kind it never
saw), then with the post-hoc EMA of each `--ema-lengths` against the held-out images. Writes
results.json, table.md and each run's nearest-neighbour picture beside a manifest in
benchmarks/results/<date>-<name>/. Not a test: it trains for an hour on a CPU.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from manifest import RESULTS_ROOT, open_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ARMS = ("scratch", "scratch-augment", "fine-tuned")  # also the run folders' names


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-dir", required=True, help="the small folder trained on")
    p.add_argument("--held-out-dir", required=True, help="images of the same kind, not trained on")
    p.add_argument("--init-from", help="a model trained on the full dataset (the fine-tuned arm)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"which of {', '.join(ARMS)} to run")
    p.add_argument("--epochs", type=int, default=70)
    p.add_argument("--plot-every", type=int, default=1, help="epochs between sample grids")
    p.add_argument("--augment", type=float, default=0.12, help="EDM's CIFAR-10 probability")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--ema-lengths", default="0.05,0.1,0.2")
    p.add_argument("--runs-root", default="/tmp/own_images")
    p.add_argument("--name", default="own-images", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    return p


def arms(args):
    """The train.py flags of each arm asked for, refusing before any training what cannot run."""
    chosen = [name.strip() for name in args.arms.split(",")]
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown:
        sys.exit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    if "fine-tuned" in chosen and not args.init_from:
        sys.exit("the fine-tuned arm needs --init-from CHECKPOINT (or leave it out of --arms)")
    common = ["--data-dir", args.train_dir, "--epochs", str(args.epochs), "--posthoc-ema",
              "--validation-split", "0", "--keep-checkpoints", "1",
              "--plot-every", str(args.plot_every)]
    flags = {"scratch": common,
             "scratch-augment": [*common, "--augment", str(args.augment)],
             "fine-tuned": [*common, "--init-from", args.init_from]}
    return {name: flags[name] for name in chosen}


def main(argv=None):
    args = parser().parse_args(argv)
    chosen = arms(args)
    folder = open_results(args.name, args.results_root)
    from diffusion_keras import runs
    from diffusion_keras.evaluation import evaluate

    rows = []
    for name, flags in chosen.items():
        run_dir = os.path.join(args.runs_root, name)
        if not runs.run_checkpoints(run_dir):
            subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--run-dir", run_dir,
                            *flags], check=True)
        checkpoint = runs.run_checkpoints(run_dir)[-1]
        with open(os.path.join(run_dir, "log.json")) as file:
            log = json.load(file)

        def score(data_dir, checkpoint=checkpoint, **options):
            return evaluate(checkpoint, args.num_images, data_dir=data_dir, features="cifar10",
                            kid_images=min(args.num_images, 1000), **options)

        on_training = score(args.train_dir, nearest=3)
        held_out = score(args.held_out_dir)
        row = {"run": name, "flags": flags, "checkpoint": checkpoint,
               "epochs": log[-1]["epoch"],
               "fd_training_images": on_training["fd_cifar10"],
               "fd_held_out": held_out["fd_cifar10"], "nearest": on_training["nearest"],
               "posthoc_ema": {}}
        picture = os.path.join(folder, f"nearest_{name}.png")
        shutil.copy(on_training["nearest"]["picture"], picture)
        row["nearest"]["picture"] = os.path.basename(picture)
        for length in map(float, args.ema_lengths.split(",")):
            row["posthoc_ema"][f"{length:g}"] = score(args.held_out_dir,
                                                      ema_length=length)["fd_cifar10"]
        rows.append(row)
        print(json.dumps(row, indent=2), flush=True)
    with open(os.path.join(folder, "results.json"), "w") as file:
        json.dump(rows, file, indent=2)
    lengths = list(rows[0]["posthoc_ema"])
    lines = ["| run | FD training images | FD held-out | near-copies | held-out FD, post-hoc EMA "
             + " / ".join(lengths) + " |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['fd_training_images']:.3f} | {row['fd_held_out']:.3f}"
                     f" | {row['nearest']['near_copies']} of {row['nearest']['samples']} | "
                     + " / ".join(f"{row['posthoc_ema'][length]:.3f}" for length in lengths)
                     + " |")
    with open(os.path.join(folder, "table.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {folder}")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
