"""Image quality against training time: recipes trained one after another for the same wall-clock
budget on the same images, scored in the CIFAR-10 classifier's features (FD-cifar10, KD-cifar10).

    python benchmarks/time_to_quality.py --data-dir /tmp/cifar/train --minutes 20 --eval-every 5 \
        --recipes keras-io,default --output time_to_quality

Every `--eval-every` training minutes (evaluation time not counted) each recipe generates
`--num-images` images with the same sampler, steps and initial noises, from its EMA network and its
online network, and scores them against the features of all the training images. The floor (as
many held-out real images, from `--test-dir`) and the ceiling (uniform noise) are scored the same
way, so a number can be read. Results are appended to OUTPUT.jsonl as they come (an interrupted run
keeps them); OUTPUT.md (table) and OUTPUT.png (curves) are drawn from all rows in it.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from diffusion_keras import config as settings

# name -> (what it is, settings on top of the library's defaults). "keras-io" is the 2022 recipe
# this project started from (`train.py --recipe keras-io`); "default" is whatever the library's
# defaults are now. Every other recipe is written out in full (from keras-io), so a name keeps the
# meaning it had when its results were recorded, whatever the defaults become.
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
RECIPES = {
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="training images (e.g. the shared CIFAR-10 train/ folder)")
    p.add_argument("--test-dir", help="held-out real images for the floor (e.g. CIFAR-10 test/)")
    p.add_argument("--recipes", default="keras-io,default",
                   help=f"comma-separated, run in this order; known: {','.join(RECIPES)}")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per recipe")
    p.add_argument("--eval-every", type=float, default=5.0, help="training minutes between scores")
    p.add_argument("--num-images", type=int, default=1000, help="generated images per score")
    p.add_argument("--sampler", default="dpmpp2m")
    p.add_argument("--steps", default="10",
                   help="network calls per sample, comma-separated, each scored (runs 1-6 used 10)")
    p.add_argument("--spacing", default="uniform",
                   help="sampler grid(s), comma-separated, each scored (runs 1-5 used uniform)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="train on a seeded subset (tests)")
    p.add_argument("--widths", help="U-Net widths, comma-separated (tests)")
    p.add_argument("--batch-size", type=int, default=64, help="unless the recipe sets its own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-ema-powers", default="",
                   help="also average each recipe's online weights with these EMA warm-up powers "
                        "(momentum min(--extra-ema-max, 1 - (1 + n)^-p)) and score them as "
                        "'ema-pP': EMA settings compared on one training run, outside the timing")
    p.add_argument("--extra-ema-max", type=float, default=0.9999)
    p.add_argument("--output", default="time_to_quality", help="prefix of the .jsonl, .md and .png")
    p.add_argument("--plot-only", action="store_true", help="redraw the table and curve, train nothing")
    return p


class Scorer:
    """FD-cifar10 and KD-cifar10 against the training images' features, computed once."""

    def __init__(self, real_images, batch_size=500):
        from diffusion_keras import metrics
        from diffusion_keras.cifar10_features import cifar10_extractor

        self.metrics = metrics
        self.extractor = cifar10_extractor(real_images.shape[-1])
        self.batch_size = batch_size
        real = self.features(real_images)
        self.reference = metrics.FeatureStatistics().update(real)
        self.reference_kid = real[np.random.default_rng(0).permutation(len(real))[:1000]]

    def features(self, images):
        return np.concatenate([np.asarray(self.extractor.predict_on_batch(
            images[start:start + self.batch_size])) for start in range(0, len(images), self.batch_size)])

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
        import keras

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


def sample(model, noises, args, network, extra=None):
    """{(grid, calls): images} for every --spacing and --steps, from the EMA network, the online
    network ("online") or an extra average's ("ema-pP", `ExtraAverages.network`)."""
    chosen = extra.network(network, model) if network.startswith("ema-p") else network
    return {(spacing, calls): model.generate(len(noises), calls, initial_noise=noises,
                                             sampler=args.sampler, spacing=spacing, verbose=False,
                                             network=chosen)
            for spacing in args.spacing for calls in args.steps}


def train_recipe(name, images, scorer, noises, args, record):
    """Train `name` for the budget with train_on_batch (timed without the scoring pauses)."""
    import keras

    from diffusion_keras.config import TrainingConfig
    from diffusion_keras.data import ImageBatches
    from diffusion_keras.training import build_model

    description, changes = RECIPES[name]
    model_changes = {"image_size": images.shape[1], "channels": images.shape[-1], "seed": args.seed}
    if args.widths:
        model_changes["widths"] = tuple(int(width) for width in args.widths.split(","))
    config = TrainingConfig().updated({"optimization": {"batch_size": args.batch_size}}).updated(
        changes).updated({"model": model_changes})
    batch_size = config.optimization.batch_size
    keras.utils.set_random_seed(args.seed)
    model = build_model(config.model, config.optimization, len(images) // batch_size)
    model.normalizer.adapt(images[:5000])
    batches = ImageBatches(images, batch_size, seed=args.seed)
    extra = ExtraAverages(args.extra_ema_powers, args.extra_ema_max)
    networks = ["ema", "online", *extra.powers]
    trained, steps, next_score = 0.0, 0, args.eval_every * 60
    budget = args.minutes * 60
    print(f"{name}: {description}", flush=True)
    while trained < budget:
        for index in range(len(batches)):
            started = time.perf_counter()
            model.train_on_batch(batches[index])
            trained += time.perf_counter() - started
            steps += 1
            if extra.powers:
                extra.update(model.network.get_weights())
            if trained >= next_score or trained >= budget:
                for network in networks:
                    for (spacing, calls), images in sample(model, noises, args, network,
                                                           extra).items():
                        scores = scorer(images)
                        record({"recipe": name, "network": network, "spacing": spacing,
                                "calls": calls, "minutes": round(trained / 60, 2), "steps": steps, **scores,
                                "description": description,
                                "settings": {"model": model.config.to_dict(),
                                             "optimization": config.optimization.to_dict()}})
                        print(f"  {trained / 60:5.1f} min, {steps} steps, {network}, {spacing}, "
                              f"{calls} calls: "
                              f"FD-cifar10 {scores['fd_cifar10']:.2f}, KD-cifar10 "
                              f"{scores['kd_cifar10']:.4f}", flush=True)
                next_score += args.eval_every * 60
            if trained >= budget:
                break
        batches.on_epoch_end()


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def write_report(rows, prefix):
    """OUTPUT.md: the last score of every recipe and network, and every score; OUTPUT.png: FD-cifar10
    against training minutes, one line per recipe and network, floor and ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    references = {row["recipe"]: row for row in rows if row["network"] == "reference"}
    runs = [row for row in rows if row["network"] != "reference"]
    for row in runs:
        row.setdefault("spacing", "uniform")  # rows recorded before --spacing took several
        row.setdefault("calls", 10)  # and before --steps did
    lines = ["| recipe | network | grid | calls | minutes | steps | FD-cifar10 | KD-cifar10 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in runs:
        lines.append(f"| {row['recipe']} | {row['network']} | {row['spacing']} | {row['calls']} | "
                     f"{row['minutes']:.1f} | {row['steps']} | {row['fd_cifar10']:.2f} | "
                     f"{row['kd_cifar10']:.4f} |")
    for name, row in references.items():
        lines.append(f"| {name} | {row['description']} | | | | | {row['fd_cifar10']:.2f} | "
                     f"{row['kd_cifar10']:.4f} |")
    with open(f"{prefix}.md", "w") as file:
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

    def line_of(row):
        return row["recipe"], row["network"], row["spacing"], row["calls"]

    for line in dict.fromkeys(map(line_of, runs)):
        recipe, network, grid, calls = line
        points = [(row["minutes"], row["fd_cifar10"]) for row in runs if line_of(row) == line]
        label = f"{recipe} ({network}{f', {grid}, {calls} calls' if len(samplings) > 1 else ''})"
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
    figure.savefig(f"{prefix}.png", dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parser().parse_args(argv)
    unknown = [name for name in args.recipes.split(",") if name not in RECIPES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    try:
        args.extra_ema_powers = [float(power) for power in args.extra_ema_powers.split(",") if power]
    except ValueError:
        sys.exit("error: --extra-ema-powers takes comma-separated numbers, e.g. 0.67,0.8")
    if not all(power > 0 for power in args.extra_ema_powers) or not 0 < args.extra_ema_max < 1:
        sys.exit("error: EMA warm-up powers must be positive and --extra-ema-max in (0, 1)")
    args.spacing = args.spacing.split(",")
    unknown = [spacing for spacing in args.spacing if spacing not in settings.SPACINGS]
    if unknown:
        sys.exit(f"error: unknown --spacing {unknown}; known: {list(settings.SPACINGS)}")
    try:
        args.steps = [int(calls) for calls in args.steps.split(",")]
    except ValueError:
        sys.exit("error: --steps takes comma-separated whole numbers of network calls, e.g. 10,20")
    if min(args.steps) < 1:
        sys.exit("error: --steps must be at least 1 network call")
    path = f"{args.output}.jsonl"
    if not args.plot_only:
        if not args.data_dir:
            sys.exit("error: --data-dir is required unless --plot-only")
        from diffusion_keras.data import load_image_folder, preprocess

        images = preprocess(load_image_folder(args.data_dir, args.image_size, 3, args.limit,
                                               args.seed))
        scorer = Scorer(images)
        rng = np.random.default_rng(args.seed)
        noises = rng.standard_normal((args.num_images, *images.shape[1:]), dtype=np.float32)

        def record(row):
            with open(path, "a") as file:
                file.write(json.dumps(row) + "\n")

        if args.test_dir:
            real = preprocess(load_image_folder(args.test_dir, args.image_size, 3, args.num_images,
                                                 args.seed))
            record({"recipe": "floor", "network": "reference", **scorer(real),
                    "description": f"{len(real)} held-out real images"})
        uniform = rng.random((args.num_images, *images.shape[1:]), dtype=np.float32)
        record({"recipe": "ceiling", "network": "reference", **scorer(uniform),
                "description": f"{args.num_images} uniform-noise images"})
        for name in args.recipes.split(","):
            train_recipe(name, images, scorer, noises, args, record)
    write_report(read_rows(path), args.output)
    print(f"wrote {args.output}.md and {args.output}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
