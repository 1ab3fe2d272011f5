"""Image quality against training time: recipes trained one after another for the same wall-clock
budget on the same images, the way users train, scored in the CIFAR-10 classifier's features
(FD-cifar10, KD-cifar10).

    python benchmarks/time_to_quality.py --data-dir /tmp/cifar/train --minutes 20 --eval-every 5 \
        --recipes keras-io,default --repeats 2 --name defaults-vs-keras-io

Each recipe trains through `training.train` (the prepared image file, its batches, epoch seeds,
validation, checkpoints and sample grids: what `train.py` does), stopped by a wall-clock budget
(`QualityClock`). Every `--eval-every` training minutes (scoring time not counted) it generates
`--num-images` images through `model.generate` with the same sampler, calls and seed (the
sampler's own default grid unless `--spacing`), from its EMA network and its online network, and
scores them against the features of all the training images. The floor (as many held-out real
images, from `--test-dir`) and the ceiling (uniform noise) are scored the same way, so a number can
be read. `--repeats 2` runs the recipes again in reverse order (drift on a shared machine then
falls on both). Rows go to benchmarks/results/<date>-<name>/rows.jsonl as they come (an
interrupted run keeps them), beside manifest.json (commit, command, machine), table.md and
curves.png; the run folders (checkpoints, samples) to --runs-root.
"""

import json
import os
import shlex
import sys
import time

import keras
import numpy as np
from manifest import RESULTS_ROOT, commit, open_results

from diffusion_keras import checks
from diffusion_keras import config as settings
from diffusion_keras.cli import Parser

# name -> (what it is, settings on top of the library's defaults): the candidates screened so far.
# "keras-io" is the 2022 recipe this project started from (`train.py --recipe keras-io`); "default"
# is whatever the library's defaults are now. Every other candidate is written out in full (from
# keras-io), so a name keeps the meaning it had when its results were recorded.
KERAS_IO = settings.RECIPES["keras-io"]


def variant(base, model=None, optimization=None):
    return {"model": {**base["model"], **(model or {})},
            "optimization": {**base["optimization"], **(optimization or {})}}


EMA_WARMUP = variant(KERAS_IO, {"ema_warmup": 0.75})
FLOW = variant(EMA_WARMUP, {"formulation": "flow", "prediction": None, "loss_function": None,
                            "time_distribution": None})
FLOW_EVERY_P067 = variant(FLOW, {"embedding": "every", "ema_warmup": 0.67})
FLOW_MUON = variant(FLOW_EVERY_P067, optimization={"optimizer": "muon"})
FLOW_COSINE = variant(FLOW_EVERY_P067, optimization={"learning_rate_schedule": "cosine", "epochs": 6})
CANDIDATES = {
    "keras-io": ("the 2022 keras-io recipe (EMA 0.999 from step 0)", KERAS_IO),
    "default": ("the library's current defaults", {}),
    "ema-warmup": ("keras-io + EMA warm-up (power 3/4)", EMA_WARMUP),
    "lr-warmup": ("ema-warmup + 200 steps of learning-rate warm-up, lr 2e-3", variant(
        EMA_WARMUP, optimization={"learning_rate": 2e-3, "warmup_steps": 200})),
    "group-norm": ("ema-warmup + GroupNorm", variant(EMA_WARMUP, {"norm": "group"})),
    "min-snr": ("ema-warmup + epsilon MSE with min-SNR-5 weighting", variant(
        EMA_WARMUP, {"loss_function": "mse", "loss_weighting": "min_snr"})),
    "v-mse": ("ema-warmup + v-prediction, MSE on v", variant(
        EMA_WARMUP, {"prediction": "v", "loss_function": "mse"})),
    "edm": ("ema-warmup + EDM: v-prediction MSE (= EDM preconditioning and weighting for unit-"
            "variance data) with log-normal noise levels", variant(EMA_WARMUP, {
                "prediction": "v", "loss_function": "mse", "time_distribution": "lognormal"})),
    "flow": ("ema-warmup + rectified flow (velocity, MSE, logit-normal times)", FLOW),
    "flow-lr": ("flow + 200 steps of learning-rate warm-up to 2e-3", variant(
        FLOW, optimization={"learning_rate": 2e-3, "warmup_steps": 200})),
    "flow-b32": ("flow at batch 32: twice the updates per image seen", variant(
        FLOW, optimization={"batch_size": 32})),
    "flow-b16": ("flow at batch 16", variant(FLOW, optimization={"batch_size": 16})),
    "flow-every": ("flow + the noise embedding added in every residual block", variant(
        FLOW, {"embedding": "every"})),
    "flow-gn": ("flow + GroupNorm", variant(FLOW, {"norm": "group"})),
    "flow-every-p0.67": ("flow-every + EMA warm-up power 0.67", FLOW_EVERY_P067),
    "flow-cos": ("flow-every-p0.67 + cosine learning-rate decay to 0 over 6 epochs (4,686 updates "
                 "at batch 64; 20 minutes reach about 4,100)", FLOW_COSINE),
    "flow-cos-lr2e-3": ("flow-cos at learning rate 2e-3 after 200 warm-up updates", variant(
        FLOW_COSINE, optimization={"learning_rate": 2e-3, "warmup_steps": 200})),
    "flow-wide": ("flow-every-p0.67 with widths 32,64,128,256 (2.6x the parameters, mostly at 8 and "
                  "4 px; about 15% more time per step here)", variant(
                      FLOW_EVERY_P067, {"widths": (32, 64, 128, 256)})),
    "flow-uniform": ("flow-every-p0.67 with uniform times instead of logit-normal", variant(
        FLOW_EVERY_P067, {"time_distribution": "uniform"})),
    "flow-d1": ("flow-every-p0.67 with one residual block per level, not two (half the parameters, "
                "about 1.8x the updates per minute here)", variant(FLOW_EVERY_P067, {"block_depth": 1})),
    "flow-no-norm": ("flow-every-p0.67 without normalisation layers (about 1.35x the updates per "
                     "minute here)", variant(FLOW_EVERY_P067, {"norm": "none"})),
    "flow-muon": ("flow-every-p0.67 trained with Muon (orthogonalised kernel updates) at 1e-3",
                  FLOW_MUON),
    "flow-muon-lr5e-4": ("flow-muon at learning rate 5e-4", variant(
        FLOW_MUON, optimization={"learning_rate": 5e-4})),
    "flow-muon-no-norm": ("flow-muon without normalisation layers (about 1.3x the updates per minute "
                          "here)", variant(FLOW_MUON, {"norm": "none"})),
    "flow-muon-wd5e-2": ("flow-muon at weight decay 5e-2 (500x the defaults')", variant(
        FLOW_MUON, optimization={"weight_decay": 5e-2})),
    "flow-d1-wide": ("flow-d1 with widths 48,96,144,192 (2.3M parameters, the defaults' step time)",
                     variant(FLOW_EVERY_P067, {"block_depth": 1, "widths": (48, 96, 144, 192)})),
}


def parser():
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="training images (e.g. the shared CIFAR-10 train/ folder)")
    p.add_argument("--data-file", help="instead, a prepared .u8 file (its .json beside it), as "
                                       "benchmarks/gpu_suite.py carries one")
    p.add_argument("--test-dir", help="held-out real images for the floor (e.g. CIFAR-10 test/)")
    p.add_argument("--recipes", default="keras-io,default",
                   help=f"comma-separated, run in this order; known: {','.join(CANDIDATES)}")
    p.add_argument("--repeats", type=checks.positive_int_argument, default=1,
                   help="runs of the recipe list, every second one in reverse order")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per recipe")
    p.add_argument("--eval-every", type=float, default=5.0, help="training minutes between scores")
    p.add_argument("--num-images", type=int, default=500, help="generated images per score")
    p.add_argument("--sampler", default=settings.DEFAULT_SAMPLER, choices=settings.SAMPLER_NAMES)
    p.add_argument("--steps", type=checks.positive_int_list_argument, default="10",
                   help="network calls per sample, comma-separated, each scored")
    p.add_argument("--spacing", default="", type=checks.argument(
        checks.comma_separated(str), lambda grid, what: checks.choice(grid, settings.SPACINGS, "grid")),
        help="sampler grid(s), comma-separated, each scored (default: the sampler's own)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="train on a seeded subset (tests)")
    p.add_argument("--widths", help="U-Net widths, comma-separated (tests)")
    p.add_argument("--batch-size", type=int, help="instead of the recipe's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-ema-powers", default="", type=checks.argument(
        checks.comma_separated(float), lambda power, what: checks.number(power, what, 0, low_open=True)),
                   help="also average each recipe's online weights with these EMA warm-up powers "
                        "(momentum min(--extra-ema-max, 1 - (1 + n)^-p)) and score them as "
                        "'ema-pP': EMA settings compared on one training run, outside the timing")
    p.add_argument("--extra-ema-max", default=0.9999, type=checks.argument(
        float, lambda value, what: checks.number(value, what, 0, 1, low_open=True, high_open=True)))
    p.add_argument("--name", default="time-to-quality", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    p.add_argument("--runs-root", default=os.path.join("runs", "time_to_quality"),
                   help="where each recipe's run folder (checkpoints, samples, log) goes")
    p.add_argument("--cache-dir", help="prepared images (default: train.py's)")
    p.add_argument("--redraw", metavar="FOLDER",
                   help="redraw FOLDER's table and curves from its rows, train nothing")
    p.add_argument("--rescore", metavar="FOLDER",
                   help="score the last checkpoint of each of FOLDER's runs (in --runs-root) with "
                        "this --sampler, --spacing and --steps, into FOLDER/rescored.jsonl")
    return p


class Scorer:
    """FD-cifar10 and KD-cifar10 against the training images' features, computed once."""

    def __init__(self, real_images, batch_size=500):
        from diffusion_keras import metrics
        from diffusion_keras.cifar10_features import cifar10_extractor
        from diffusion_keras.evaluation import extract_features

        self.metrics = metrics
        extractor = cifar10_extractor(real_images.shape[-1])
        self.features = lambda images: extract_features(extractor, images, batch_size)
        real = self.features(real_images)
        self.reference = metrics.FeatureStatistics().update(real)
        self.reference_kid = real[np.random.default_rng(0).permutation(len(real))[:1000]]

    def __call__(self, images):
        features = self.features(images)
        statistics = self.metrics.FeatureStatistics().update(features)
        kid = self.metrics.kernel_inception_distance(self.reference_kid, features[:1000])
        return {"fd_cifar10": self.metrics.fid(self.reference, statistics),
                "kd_cifar10": float(np.asarray(kid))}


class ExtraAverages:
    """EMAs of the online weights beside the model's own, one per warm-up power, kept in NumPy and
    named as their rows are ("ema-p0.67")."""

    def __init__(self, powers, maximum):
        self.powers = {f"ema-p{power:g}": power for power in powers}
        self.maximum, self.averages, self.updates, self.networks = maximum, {}, 0, {}

    def network(self, name, model):
        """A network of the model's architecture holding average `name` (one kept per name)."""
        if name not in self.networks:
            self.networks[name] = keras.models.clone_model(model.ema_network)
        self.networks[name].set_weights(self.averages[name])
        return self.networks[name]

    def update(self, weights):
        from diffusion_keras.model import ema_momentum

        for name, power in self.powers.items():
            average = self.averages.setdefault(name, [np.array(w, np.float32) for w in weights])
            rate = 1.0 - float(ema_momentum(self.updates, self.maximum, power))
            for kept, weight in zip(average, weights):
                kept -= rate * (kept - weight)
        self.updates += 1


class QualityClock(keras.callbacks.Callback):
    """Stops training after `budget` seconds of it and calls `score(model, minutes, steps)` every
    `every` seconds and at the end; the time spent scoring and averaging (`extra`) is not counted,
    everything else `fit` does (steps, validation, checkpoints, sample grids) is."""

    def __init__(self, budget, every, score, extra, now=time.perf_counter):
        super().__init__()
        self.budget, self.every, self.score, self.extra, self.now = budget, every, score, extra, now

    def on_train_begin(self, logs=None):
        self.started, self.paused, self.steps = self.now(), 0.0, 0
        self.next_score, self.scored_at = self.every, None

    def trained(self):
        return self.now() - self.started - self.paused

    def pause_for(self, work):
        started = self.now()
        work()
        self.paused += self.now() - started

    def scored(self):
        self.pause_for(lambda: self.score(self.model, self.trained() / 60, self.steps))
        self.scored_at = self.steps

    def on_train_batch_begin(self, batch, logs=None):
        if self.extra.powers:  # the model averages the weights its step starts from
            self.pause_for(lambda: self.extra.update(self.model.network.get_weights()))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.trained() >= min(self.next_score, self.budget):
            self.scored()
            self.next_score += self.every
        if self.trained() >= self.budget:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.scored_at != self.steps:  # the recipe's own epochs ended before the budget
            self.scored()


def recipe_config(name, args, run_dir):
    """The recipe's TrainingConfig, as train.py would build it, training until the budget stops it
    (a cosine schedule keeps its own epochs: they set where its decay ends)."""
    from diffusion_keras.config import TrainingConfig

    changes = CANDIDATES[name][1]
    config = TrainingConfig().updated(changes)
    model = {}
    if args.widths:
        model["widths"] = tuple(int(width) for width in args.widths.split(","))
    optimization = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if config.optimization.learning_rate_schedule != "cosine":
        optimization["epochs"] = 10_000  # the budget stops it
    run = {"seed": args.seed, "run_dir": run_dir, "data_dir": args.data_dir, "limit": args.limit,
           "cache_dir": args.cache_dir}
    return config.updated({"model": model, "optimization": optimization, "run": run})


def score_networks(model, networks, args, scorer, record, row):
    """Score each of `networks` ({label: "ema", "online" or a network}) at every --spacing and
    --steps from the same seeded noises, recording `row` with the scores."""
    from diffusion_keras.samplers import sampler_record

    for label, network in networks.items():
        for spacing in args.spacing:
            for calls in args.steps:
                images = model.generate(args.num_images, calls, seed=args.seed,
                                        sampler=args.sampler, spacing=spacing, verbose=False,
                                        network=network)
                grid = spacing or sampler_record(args.sampler).default_spacing
                scores = scorer(images)
                record({**row, "network": label, "sampler": args.sampler, "spacing": grid,
                        "calls": calls, **scores, "settings": {"model": model.config.to_dict()}})
                print(f"  {row['minutes']:5.1f} min, {row['steps']} steps, {label}, {grid}, "
                      f"{calls} calls: FD-cifar10 {scores['fd_cifar10']:.2f}, KD-cifar10 "
                      f"{scores['kd_cifar10']:.4f}", flush=True)


def train_recipe(name, repeat, images, scorer, args, record):
    """Train `name` through `training.train` for the budget, scoring as it goes."""
    from diffusion_keras import training

    description = CANDIDATES[name][0]
    run_dir = run_folder(args.runs_root, args.folder, name, repeat)
    config = recipe_config(name, args, run_dir)
    extra = ExtraAverages(args.extra_ema_powers, args.extra_ema_max)
    print(f"{name} (run {repeat}): {description}; run folder {run_dir}", flush=True)

    def score(model, minutes, steps):
        networks = {"ema": "ema", "online": "online",
                    **{power: extra.network(power, model) for power in extra.powers}}
        score_networks(model, networks, args, scorer, record, {
            "recipe": name, "run": repeat, "minutes": round(minutes, 2), "steps": steps,
            "description": description, "optimization": config.optimization.to_dict()})

    clock = QualityClock(args.minutes * 60, args.eval_every * 60, score, extra)
    training.train(images, run_dir, config, verbose=0, callbacks=[clock])


def run_folder(runs_root, results_folder, name, repeat):
    return os.path.join(runs_root, f"{os.path.basename(results_folder)}-{name}-{repeat}")


def rescore(folder, scorer, args):
    """Score the last checkpoint (the budget's end) of every run of the results `folder` again,
    with this call's --sampler, --spacing and --steps, into FOLDER/rescored.jsonl: another
    sampler's view of the same trained networks, no training."""
    from diffusion_keras import runs

    ends = {}
    for row in read_rows(folder):
        if row["network"] != "reference":
            ends[(row["recipe"], row["run"])] = row  # the last row of each run: the budget's end

    def record(row):
        with open(os.path.join(folder, "rescored.jsonl"), "a") as file:
            file.write(json.dumps(row) + "\n")

    for (name, repeat), end in ends.items():
        checkpoint = runs.run_checkpoints(run_folder(args.runs_root, folder, name, repeat))[-1]
        model = runs.load_checkpoint(checkpoint)
        print(f"{name} (run {repeat}): {checkpoint}", flush=True)
        score_networks(model, {"ema": "ema", "online": "online"}, args, scorer, record, {
            "recipe": name, "run": repeat, "minutes": end["minutes"], "steps": end["steps"],
            "checkpoint": checkpoint, "commit": commit(),
            "command": shlex.join(["benchmarks/time_to_quality.py", *sys.argv[1:]])})


def read_rows(folder):
    path = os.path.join(folder, ROWS)
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


ROWS = "rows.jsonl"


def write_report(rows, folder):
    """table.md: every score; curves.png: FD-cifar10 against training minutes, one line per recipe,
    run and network, floor and ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    references = {row["recipe"]: row for row in rows if row["network"] == "reference"}
    runs = [row for row in rows if row["network"] != "reference"]
    lines = ["| recipe | run | network | grid | calls | minutes | steps | FD-cifar10 | KD-cifar10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in runs:
        lines.append(f"| {row['recipe']} | {row['run']} | {row['network']} | {row['spacing']} | "
                     f"{row['calls']} | {row['minutes']:.1f} | {row['steps']} | "
                     f"{row['fd_cifar10']:.2f} | {row['kd_cifar10']:.4f} |")
    for name, row in references.items():
        lines.append(f"| {name} | | {row['description']} | | | | | {row['fd_cifar10']:.2f} | "
                     f"{row['kd_cifar10']:.4f} |")
    with open(os.path.join(folder, "table.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(9, 4.5))
    colours = {recipe: f"C{index}" for index, recipe in enumerate(dict.fromkeys(
        row["recipe"] for row in runs))}
    # the network users sample from: solid; the online one: dotted; extra averages: thin, dashed
    styles = {"ema": {"linestyle": "-", "marker": "o"}, "online": {"linestyle": ":", "marker": "s"}}
    extras = sorted({row["network"] for row in runs} - set(styles))
    styles.update({network: {"linestyle": "--", "marker": "^vDxP*"[index % 6], "linewidth": 0.8,
                             "alpha": 0.6} for index, network in enumerate(extras)})
    # a second sampling (grid, calls) and beyond: hollow markers, named in the legend
    samplings = list(dict.fromkeys((row["spacing"], row["calls"]) for row in runs))

    repeated = len({row["run"] for row in runs}) > 1

    def line_of(row):
        return row["recipe"], row["run"], row["network"], row["spacing"], row["calls"]

    for line in dict.fromkeys(map(line_of, runs)):
        recipe, run, network, grid, calls = line
        points = [(row["minutes"], row["fd_cifar10"]) for row in runs if line_of(row) == line]
        label = (f"{recipe}{f' run {run}' if repeated else ''} ({network}"
                 f"{f', {grid}, {calls} calls' if len(samplings) > 1 else ''})")
        hollow = {"markerfacecolor": "none"} if (grid, calls) != samplings[0] else {}
        axis.plot(*zip(*points), color=colours[recipe], label=label, **styles[network], **hollow)
    for name, row in references.items():
        axis.axhline(row["fd_cifar10"], color="grey", linestyle="--", linewidth=1)
        axis.text(0.01, row["fd_cifar10"], f"{name}: {row['description']}", fontsize=8,
                  color="grey", va="bottom", transform=axis.get_yaxis_transform())
    axis.set_xlim(left=0)
    axis.set_yscale("log")
    axis.set_xlabel("training minutes (evaluation not counted)")
    axis.set_ylabel("FD-cifar10 (lower is better)")
    axis.set_title("Image quality against training time")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(os.path.join(folder, "curves.png"), dpi=120)
    plt.close(figure)


def checked(args):
    """The arguments with the recipes known and data to train on (before any work)."""
    unknown = [name for name in args.recipes.split(",") if name not in CANDIDATES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; known: {list(CANDIDATES)}")
    if not args.redraw and (args.data_dir is None) == (args.data_file is None):
        sys.exit("error: give one of --data-dir and --data-file, unless --redraw")
    args.spacing = args.spacing or [None]  # the sampler's own grid
    return args


def main(argv=None):
    args = checked(parser().parse_args(argv))
    if args.redraw:
        write_report(read_rows(args.redraw), args.redraw)
        print(f"redrew {args.redraw}/table.md and curves.png")
        return 0
    from diffusion_keras.data import load_image_folder, open_images
    from diffusion_keras.image_cache import open_prepared_file

    if args.data_file:
        images = open_prepared_file(args.data_file)
        args.image_size = images.shape[1]  # the floor's real images at the file's size
    else:  # train.py's prepared file
        images = open_images(args.image_size, data_dir=args.data_dir, limit=args.limit,
                             seed=args.seed, channels=3, cache_dir=args.cache_dir)
    scorer = Scorer(images)
    if args.rescore:
        rescore(args.rescore, scorer, args)
        return 0
    args.folder = open_results(args.name, args.results_root,
                               ["benchmarks/time_to_quality.py", *(argv or sys.argv[1:])])

    def record(row):
        with open(os.path.join(args.folder, ROWS), "a") as file:
            file.write(json.dumps(row) + "\n")

    if args.test_dir:
        real = load_image_folder(args.test_dir, args.image_size, 3, args.num_images, args.seed)
        record({"recipe": "floor", "network": "reference", **scorer(real),
                "description": f"{len(real)} held-out real images"})
    uniform = np.random.default_rng(args.seed).random((args.num_images, *images.shape[1:]),
                                                      dtype=np.float32)
    record({"recipe": "ceiling", "network": "reference", **scorer(uniform),
            "description": f"{args.num_images} uniform-noise images"})
    recipes = args.recipes.split(",")
    for repeat in range(1, args.repeats + 1):
        for name in recipes if repeat % 2 else recipes[::-1]:
            train_recipe(name, repeat, images, scorer, args, record)
            write_report(read_rows(args.folder), args.folder)
    print(f"wrote {args.folder}: rows.jsonl, table.md, curves.png, manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
