"""Settings, in one home: what the model is, how it is optimised, and what a run reads and writes.

`ModelConfig` is exactly what `DiffusionModel.get_config()` adds to Keras' own config;
`OptimizationConfig` builds the optimizer and its learning-rate schedule; `RunConfig` holds the data
and the run folder. `TrainingConfig` bundles the three as `config.json` stores them, `train.py
--config FILE` reads them (flags override), `--resume` reads them back, and Python users pass them to
`training.train`. Every default is written here once; every value is checked here (with `checks`), before any
data is loaded or any folder is made.
"""

import dataclasses
import importlib.util
import json
import os

from diffusion_keras import checks
from diffusion_keras.errors import UsageError

FORMULATIONS = ("continuous", "ddpm", "flow")
SCHEDULES = ("linear", "cosine", "offset_cosine", "flow")
TARGETS = ("epsilon", "x0", "v", "flow")
LOSSES = ("mae", "mse")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
TIME_DISTRIBUTIONS = ("uniform", "logit_normal", "lognormal")
NORMALIZATIONS = ("batch", "group", "none")
EMBEDDINGS = ("input", "every")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DATASETS = ("cifar10", "mnist", "fashion_mnist", "oxford_flowers102")  # tensorflow-datasets names
INCEPTION_SIZE = 299  # InceptionV3's own input size, for FID and KID

# Sampling (`samplers` implements them; the names live here so the command lines can list them
# without importing Keras). The default sampler and each sampler's grid scored the lowest FD-cifar10
# at 10 and 20 network calls on a CIFAR-10 model of the defaults (BENCHMARKS.md, "Samplers").
SAMPLER_NAMES = ("dpmpp2m", "dpmpp3m", "ddim", "ddpm", "heun")
SPACINGS = ("uniform", "quadratic", "karras", "log_snr")
VARIANCES = ("posterior", "beta")
DEFAULT_SAMPLER = "dpmpp2m"
STUDENT_SAMPLER = "ddim"  # a distilled student's (`ModelConfig.default_sampler`)

# What a formulation means when a setting is left at None (`formulation.Formulation` is what a model
# learns from the resolved settings; Ho et al. 2020; Lipman et al. 2023 and
# Esser et al. 2024 for flow: the straight path between data and noise, velocity target, MSE,
# logit-normal times).
FORMULATION_DEFAULTS = {
    "continuous": {"schedule": "offset_cosine", "prediction": "epsilon", "loss_function": "mae",
                   "time_distribution": "uniform"},
    "ddpm": {"schedule": "linear", "prediction": "epsilon", "loss_function": "mae",
             "time_distribution": "uniform"},
    "flow": {"schedule": "flow", "prediction": "flow", "loss_function": "mse",
             "time_distribution": "logit_normal"},
}


# Named starting points (`train.py --recipe NAME`, flags and --config on top): "keras-io" is the 2022
# keras-io DDIM recipe this project started from (EMA 0.999 from the first step, epsilon MAE).
RECIPES = {
    "keras-io": {
        "model": {"ema": 0.999, "ema_warmup": 0.0, "norm": "batch", "embedding": "input",
                  "formulation": "continuous", "schedule": None, "prediction": None,
                  "time_distribution": None, "loss_function": None, "loss_target": None,
                  "loss_weighting": "uniform"},
        "optimization": {"optimizer": "adamw", "learning_rate": 1e-3, "warmup_steps": 0,
                         "learning_rate_schedule": "constant"},
    },
}


# Model sizes (`train.py --preset NAME`, under --recipe, --config and flags), each with the batch
# size, learning rate and EMA that suit it; PRESET_PARAMETERS are their U-Nets' parameter counts
# (tests/test_config.py checks them). "cifar" is the default; "ddpm-cifar" is Ho et al.'s CIFAR-10
# size (GroupNorm, the embedding in every block, attention at 16 px, dropout 0.1). The larger
# presets keep AdamW at the papers' learning rates: Muon was measured at the "cifar" size only.
_DDPM_STYLE = {"norm": "group", "embedding": "every", "dropout": 0.1, "embedding_dims": 128}
PRESETS = {
    "cifar": {"model": {}, "optimization": {}},
    "ddpm-cifar": {
        "model": {**_DDPM_STYLE, "image_size": 32, "widths": (128, 256, 320, 320), "block_depth": 3,
                  "attention_resolutions": (16,), "ema": 0.9999},
        "optimization": {"optimizer": "adamw", "batch_size": 128, "learning_rate": 2e-4,
                         "warmup_steps": 5000, "clip_norm": 1.0},
    },
    "64px": {
        "model": {**_DDPM_STYLE, "image_size": 64, "widths": (64, 128, 256, 384), "block_depth": 2,
                  "attention_resolutions": (16, 8), "ema": 0.9995},
        "optimization": {"optimizer": "adamw", "batch_size": 64, "learning_rate": 2e-4,
                         "warmup_steps": 1000, "clip_norm": 1.0},
    },
    "128px": {
        "model": {**_DDPM_STYLE, "image_size": 128, "widths": (64, 128, 256, 384, 512),
                  "block_depth": 2, "attention_resolutions": (16, 8), "ema": 0.9995},
        "optimization": {"optimizer": "adamw", "batch_size": 32, "learning_rate": 1e-4,
                         "warmup_steps": 1000, "clip_norm": 1.0},
    },
}
PRESET_PARAMETERS = {"cifar": 2_078_467, "ddpm-cifar": 35_800_259, "64px": 16_876_611,
                     "128px": 38_120_003}


# Post-hoc EMA (Karras et al. 2024): the relative widths of the two power-function averages
# training keeps (`train.py --posthoc-ema`), EDM2's, and the widest any can be (a flat average)
POSTHOC_EMA_WIDTHS = (0.05, 0.10)
MAX_EMA_LENGTH = 12 ** -0.5

# The `--augment` a memorisation check that finds near-copies suggests: on 200 CIFAR-10 horses it
# took them from 16.7% of the samples to 0.1% (BENCHMARKS.md, "Training on your own images")
SUGGESTED_AUGMENT = 0.2


def default_cache_dir(kind):
    """Where prepared images ("images"), real-image statistics ("reference") and JAX's compiled
    programs ("compiled") are kept between runs: $XDG_CACHE_HOME/diffusion_keras/KIND, by default
    under ~/.cache."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "diffusion_keras", kind)


class _Section:
    """Dict round trips with one-line errors for unknown keys (a typo in a config file)."""

    @classmethod
    def field_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values, where="config"):
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UsageError(f"unknown setting(s) {unknown} in {where}; known: {cls.field_names()}")
        return cls(**values)

    def to_dict(self):
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def differences(self, other, names=("this", "other")):
        """'field: this has A, other has B' for every setting that differs from `other`'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{field}: {names[0]} has {mine[field]!r}, {names[1]} has {theirs[field]!r}"
                for field in mine if mine[field] != theirs[field]]


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The network, the diffusion it learns and the EMA copy sampled from; saved in the `.keras`."""

    # architecture
    image_size: int = 32
    channels: int = 3
    widths: tuple = (32, 64, 96, 128)
    block_depth: int = 2
    embedding_dims: int = 32
    embedding_max_frequency: float = 1000.0
    attention_resolutions: tuple = ()
    norm: str = "batch"
    embedding: str = "every"  # noise level added in every residual block (DDPM), not at the input
    dropout: float = 0.0
    # class conditioning (empty: unconditional); classifier-free guidance needs the label dropout
    class_names: tuple = ()
    label_dropout: float = 0.1  # training labels replaced by the no-class token (Ho & Salimans 2022)
    # EDM's non-leaky augmentation (`augmentation`): the probability of each transform per training
    # image, its labels a network input (zero when sampling); 0: off, no such input
    augment: float = 0.0
    # diffusion (None: the formulation's default, see FORMULATION_DEFAULTS)
    formulation: str = "flow"  # measured best (BENCHMARKS.md); --recipe keras-io for the old
    schedule: str | None = None
    timesteps: int = 1000
    prediction: str | None = None
    time_distribution: str | None = None
    # loss
    loss_function: str | None = None
    loss_target: str | None = None  # None: the prediction's own space
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    # sampling network
    ema: float = 0.999
    ema_warmup: float = 0.67  # k-diffusion's power: momentum min(ema, 1 - (1 + updates)^-power)
    # post-hoc EMA (`posthoc_ema`): the relative widths of the power-function averages kept besides
    # the EMA, for any EMA length after training; empty: none kept
    posthoc_ema: tuple = ()
    seed: int | None = None  # the training noise's; `training.train` sets the run's seed here
    # a student (`distillation`) records how it was distilled: None for a diffusion model
    distillation: str | None = None  # the method, one of DISTILLATION_METHODS
    student_calls: tuple = ()  # the network calls it was distilled to sample in
    teacher_steps: int | None = None  # the teacher's calls per image it learnt from (progressive:
    # the DDIM steps its calls make in one each; None in a student saved before: twice its calls)

    def __post_init__(self):
        for name in ("widths", "attention_resolutions", "student_calls"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        object.__setattr__(self, "posthoc_ema", tuple(float(value) for value in self.posthoc_ema))
        checks.positive_int(self.image_size, "image size")
        if self.channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {self.channels}")
        if not self.widths or min(self.widths) < 1:
            raise UsageError(f"widths must be positive integers, got {list(self.widths)}")
        factor = 2 ** (len(self.widths) - 1)
        if self.image_size % factor:
            raise UsageError(
                f"image size {self.image_size} is not divisible by {factor} (2^(number of widths - 1) "
                f"for widths {list(self.widths)}); use a multiple of {factor} or fewer widths")
        sides = [self.image_size // 2**level for level in range(len(self.widths))]
        unknown = sorted(set(self.attention_resolutions) - set(sides))
        if unknown:
            raise UsageError(f"attention resolutions {unknown} are not feature-map sides of this "
                             f"U-Net; choose among {sides} (image size {self.image_size} halved at "
                             "each of the widths)")
        checks.positive_int(self.block_depth, "block depth")
        checks.positive_int(self.embedding_dims, "embedding dims")
        checks.choice(self.norm, NORMALIZATIONS, "normalization")
        checks.choice(self.embedding, EMBEDDINGS, "embedding injection")
        checks.number(self.dropout, "dropout", 0, 1, high_open=True)
        checks.class_names(self.class_names)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        checks.number(self.label_dropout, "label dropout", 0, 1, high_open=True)
        checks.number(self.augment, "augment probability", 0, 1)
        checks.choice(self.formulation, FORMULATIONS, "formulation")
        checks.positive_int(self.timesteps, "timesteps")
        for name, choices in (("schedule", SCHEDULES), ("prediction", TARGETS),
                              ("time_distribution", TIME_DISTRIBUTIONS), ("loss_function", LOSSES),
                              ("loss_target", TARGETS)):
            if getattr(self, name) is not None:
                checks.choice(getattr(self, name), choices, name.replace("_", " "))
        checks.choice(self.loss_weighting, LOSS_WEIGHTINGS, "loss weighting")
        checks.number(self.min_snr_gamma, "min-SNR gamma", 0, low_open=True)
        checks.number(self.ema, "ema momentum", 0, 1, high_open=True)
        checks.number(self.ema_warmup, "ema warm-up power", 0)
        for width in self.posthoc_ema:
            checks.number(width, "post-hoc EMA width", 0, MAX_EMA_LENGTH, low_open=True,
                          high_open=True)
        checks.seed(self.seed, allow_none=True)
        if self.formulation == "ddpm" and self.time_distribution not in (None, "uniform"):
            raise UsageError("the ddpm formulation draws its integer timesteps uniformly; "
                             "drop --time-distribution or use --formulation continuous")
        self._check_flow()
        if self.distillation is not None:
            checks.choice(self.distillation, DISTILLATION_METHODS, "distillation method")
            check_student_calls(self.student_calls, self.distillation)
            if self.distillation == "progressive" and self.teacher_steps is None:
                object.__setattr__(self, "teacher_steps", 2 * self.student_calls[0])
            check_teacher_steps(self.teacher_steps, self.student_calls, self.distillation)

    @property
    def default_sampler(self):
        """The sampler `generate` uses unless told: a student's is DDIM (Euler steps on its
        straightened or distilled path, on the uniform grid it was distilled on)."""
        return STUDENT_SAMPLER if self.distillation else DEFAULT_SAMPLER

    def check_sampling(self, sampler, steps, spacing, options):
        """One line where a progressive student is asked to sample otherwise than it was distilled
        to: DDIM (eta 0) on the uniform grid in exactly its number of calls. Diffusion models and
        reflow students (a flow model: any sampler, any calls) pass."""
        if self.distillation != "progressive":
            return
        calls = self.student_calls[0]
        if sampler != STUDENT_SAMPLER or spacing != "uniform" or options.get("eta", 0.0) \
                or steps != calls:
            raise UsageError(f"this student was distilled (progressive) to sample in {calls} "
                             f"network calls of deterministic DDIM on the uniform grid; use "
                             f"--steps {calls} with the default sampler (got {sampler}, {spacing}, "
                             f"{steps} steps)")

    def _check_flow(self):
        """Rectified flow is its straight path: the flow schedule, and only it, is the flow
        formulation's, and the flow velocity target exists only on that path."""
        schedule = self.schedule or FORMULATION_DEFAULTS[self.formulation]["schedule"]
        if self.formulation == "flow" and schedule != "flow":
            raise UsageError(f"the flow formulation's path is the flow schedule, not {schedule!r}: "
                             f"drop --schedule, or use --formulation continuous --schedule "
                             f"{schedule}")
        if self.formulation != "flow" and schedule == "flow":
            raise UsageError(f"the flow schedule is the flow formulation's path: use --formulation "
                             f"flow, or another --schedule with --formulation {self.formulation}")
        for name in ("prediction", "loss_target"):
            if getattr(self, name) == "flow" and schedule != "flow":
                raise UsageError(f"the flow {name.replace('_', ' ')} is the velocity of the flow "
                                 f"formulation's straight path; with the {self.formulation} "
                                 "formulation use epsilon, x0 or v, or use --formulation flow")

    def resolved(self):
        """This config with every None replaced by what the formulation means by it."""
        defaults = FORMULATION_DEFAULTS[self.formulation]
        changes = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        resolved = self.replace(**changes)
        if resolved.loss_target is None:
            resolved = resolved.replace(loss_target=resolved.prediction)
        return resolved


@dataclasses.dataclass(frozen=True)
class OptimizationConfig(_Section):
    """The optimizer, its learning-rate schedule, precision and gradient accumulation."""

    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "muon"
    learning_rate: float = 1e-3
    learning_rate_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    clip_norm: float | None = None
    precision: str | None = None  # None: the fastest measured for the backend and machine
    accumulate_steps: int = 1

    def __post_init__(self):
        checks.positive_int(self.epochs, "epochs")
        checks.positive_int(self.batch_size, "batch size")
        checks.choice(self.optimizer, OPTIMIZERS, "optimizer")
        checks.number(self.learning_rate, "learning rate", 0)
        checks.choice(self.learning_rate_schedule, LEARNING_RATE_SCHEDULES, "learning-rate schedule")
        checks.integer(self.warmup_steps, "warm-up steps", 0)
        checks.number(self.weight_decay, "weight decay", 0)
        checks.number(self.clip_norm, "gradient clip norm", 0, low_open=True, allow_none=True)
        if self.precision is not None:
            checks.choice(self.precision, PRECISIONS, "precision")
        checks.positive_int(self.accumulate_steps, "accumulate steps")


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """Where the images come from and where the run writes."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    limit: int | None = None
    flip: bool | None = None  # None: on, except for digit datasets
    validation_split: float = 0.05
    run_dir: str | None = None
    plot_every: int = 1
    keep_checkpoints: int = 3
    seed: int = 0
    tensorboard: bool = False  # losses, learning rate and sample grids in run_dir/tensorboard
    cache_dir: str | None = None  # prepared images; None: default_cache_dir("images")
    distribute: bool = False  # data-parallel over every local device (and host), JAX only
    conditional: bool = False  # learn the class labels (tfds label feature or sub-folder names)
    init_from: str | None = None  # a trained model's .keras to fine-tune (`fine_tuning`)
    ema_snapshots: int = 16  # post-hoc EMA snapshots, spread evenly over the epochs
    eval_every: int | None = None  # epochs between FDs of samples, which then pick best.keras
    eval_images: int = 1000  # samples per FD during training

    def __post_init__(self):
        checks.choice(self.dataset, DATASETS, "dataset")
        checks.positive_int(self.limit, "limit", allow_none=True)
        checks.number(self.validation_split, "validation split", 0, 1, high_open=True)
        checks.positive_int(self.plot_every, "plot every")
        checks.positive_int(self.keep_checkpoints, "keep checkpoints")
        checks.positive_int(self.ema_snapshots, "EMA snapshots")
        checks.positive_int(self.eval_every, "eval every", allow_none=True)
        checks.positive_int(self.eval_images, "eval images")
        if self.eval_images < 2:
            raise UsageError(f"an FD needs at least 2 images; --eval-images is {self.eval_images}")
        checks.seed(self.seed)
        if self.tensorboard and None in (importlib.util.find_spec("tensorflow"),
                                         importlib.util.find_spec("tensorboard")):
            raise UsageError("--tensorboard writes through TensorFlow's summary writer: "
                             "pip install tensorflow tensorboard (or -e '.[tensorboard]'), or drop "
                             "--tensorboard")

    def resolved_flip(self):
        if self.flip is not None:
            return self.flip
        return self.data_dir is not None or self.dataset not in ("mnist", "fashion_mnist")


# Distillation (`distill.py`, `distillation.distill`): a trained rectified-flow model (the teacher)
# made into a student that samples in a few network calls. "reflow" (Liu et al. 2023) fine-tunes a
# copy on the teacher's own (noise, image) pairs, straightening its paths, so one student samples in
# any number of calls; "progressive" (Salimans & Ho 2022) teaches a copy to make in one DDIM step
# what the teacher makes in several (two: Salimans & Ho's halving, run again on the student to halve
# again; more: the teacher's finer path in one round), for one call count.
DISTILLATION_METHODS = ("reflow", "progressive")
# what distill.py changes in the training defaults: fine-tuning a trained network wants its
# learning rate decayed to 0 over its epochs (at 4 calls 2.8% lower FD than constant at equal
# steps), from 4e-4 (0.6% lower FD than from 2e-4 at 4 calls; BENCHMARKS.md "Fast sampling"); an
# epoch (DistillationConfig.steps_per_epoch) checkpoints, samples and resumes often
DISTILLATION_OPTIMIZATION = {"optimizer": "adamw", "learning_rate": 4e-4, "epochs": 10,
                             "learning_rate_schedule": "cosine"}
REFLOW_TEACHER_STEPS = 10  # the teacher's calls per reflow pair (DPM-Solver++(2M))
# the teacher's DDIM steps a progressive student's calls make, 20 / N each (BENCHMARKS.md)
PROGRESSIVE_TEACHER_STEPS = 20


def check_student_calls(calls, method):
    """A student's call counts: positive, and exactly one for a progressive student."""
    if not calls:
        raise UsageError("a student needs the network calls it is distilled for, e.g. --calls 4,2,1")
    for count in calls:
        checks.positive_int(count, "calls")
    if method == "progressive" and len(calls) != 1:
        raise UsageError(f"progressive distillation makes a student for one call count, got "
                         f"{list(calls)}: pass one --calls N (and distil the student again for "
                         "N / 2)")


def check_teacher_steps(steps, calls, method):
    """The teacher's calls per image, if set: positive, and for a progressive student of N calls a
    multiple of N above it (each student call makes that many teacher DDIM steps in one)."""
    checks.positive_int(steps, "teacher steps", allow_none=True)
    if method == "progressive" and steps is not None and (steps % calls[0] or steps == calls[0]):
        raise UsageError(f"a {calls[0]}-call progressive student makes the teacher's DDIM steps "
                         f"{calls[0]} at a time: --teacher-steps must be a multiple of --calls "
                         f"above it, e.g. {2 * calls[0]} (Salimans & Ho's halving) or "
                         f"{5 * calls[0]}, got {steps}")


@dataclasses.dataclass(frozen=True)
class DistillationConfig(_Section):
    """What distill.py makes a student from and how; saved as config.json's `distillation`."""

    teacher: str | None = None  # the teacher's .keras file
    method: str = "progressive"  # measured best at 4, 2 and 1 calls (BENCHMARKS.md)
    calls: tuple = (4,)  # progressive: the one count; reflow: those its training weights
    pairs: int = 10000  # reflow: teacher samples (noise, image) to fine-tune on
    # the teacher's network calls per image: reflow's pairs (its default sampler), or the DDIM
    # path a progressive student follows in --calls; None: `resolved_teacher_steps`'s default
    teacher_steps: int | None = None
    steps_per_epoch: int = 100  # optimizer steps between checkpoints and sample grids
    minutes: float | None = None  # stop when pairs and training have taken this long

    def __post_init__(self):
        object.__setattr__(self, "calls", tuple(int(value) for value in self.calls))
        checks.choice(self.method, DISTILLATION_METHODS, "distillation method")
        check_student_calls(self.calls, self.method)
        checks.positive_int(self.pairs, "pairs")
        check_teacher_steps(self.teacher_steps, self.calls, self.method)
        checks.positive_int(self.steps_per_epoch, "steps per epoch")
        checks.number(self.minutes, "minutes", 0, low_open=True, allow_none=True)

    def resolved_teacher_steps(self, teacher):
        """`teacher_steps`, or its default for this `teacher` (its ModelConfig): 10 calls per
        reflow pair; a progressive student's own calls when it is the teacher (the halving chain);
        else PROGRESSIVE_TEACHER_STEPS where --calls divides it, twice --calls where not."""
        if self.teacher_steps is not None:
            return self.teacher_steps
        if self.method == "reflow":
            return REFLOW_TEACHER_STEPS
        if teacher.distillation == "progressive":
            return teacher.student_calls[0]
        calls = self.calls[0]
        if PROGRESSIVE_TEACHER_STEPS % calls == 0 and calls < PROGRESSIVE_TEACHER_STEPS:
            return PROGRESSIVE_TEACHER_STEPS
        return 2 * calls


SECTIONS = {"model": ModelConfig, "optimization": OptimizationConfig, "run": RunConfig}


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The three sections together, as `config.json` holds them; a distillation run's (distill.py)
    has a fourth, `distillation`, and its model section is the student's."""

    model: ModelConfig = ModelConfig()
    optimization: OptimizationConfig = OptimizationConfig()
    run: RunConfig = RunConfig()
    distillation: DistillationConfig | None = None

    def to_dict(self):
        sections = {name: getattr(self, name).to_dict() for name in SECTIONS}
        if self.distillation is not None:
            sections[DISTILLATION] = self.distillation.to_dict()
        return sections

    @classmethod
    def from_dict(cls, data, where="config", base=None):
        """The settings in `data` ({section: {setting: value}}, any part of them) on top of `base`
        (default: the defaults); unknown sections or settings are one-line errors naming them."""
        known = {**SECTIONS, DISTILLATION: DistillationConfig}
        if not isinstance(data, dict):
            raise UsageError(f"{where} must hold a JSON object with sections {list(SECTIONS)}")
        unknown = sorted(set(data) - set(known) - {METADATA, LEGACY_METADATA})
        if unknown:
            raise UsageError(f"unknown section(s) {unknown} in {where}; known: {list(known)}")
        for name, section in known.items():
            unknown = sorted(set(data.get(name, {})) - set(section.field_names()))
            if unknown:
                raise UsageError(f"unknown setting(s) {unknown} in {where} [{name}]; known: "
                                 f"{section.field_names()}")
        return (base or cls()).updated({name: data[name] for name in known if name in data})

    def updated(self, changes):
        """A copy with `changes` ({section: {setting: value}}) applied."""
        distillation = self.distillation
        if DISTILLATION in changes:
            distillation = (distillation or DistillationConfig()).replace(**changes[DISTILLATION])
        return TrainingConfig(**{name: getattr(self, name).replace(**changes.get(name, {}))
                                 for name in SECTIONS}, distillation=distillation)


DISTILLATION = "distillation"  # config.json's section of a distillation run


# config.json's section of facts about the run that are not settings ({"num_images": N});
# files written before it had num_images at the top level
METADATA, LEGACY_METADATA = "metadata", "num_images"


def run_metadata(path):
    """The metadata section of the config.json at `path` (empty where it has none)."""
    with open(path) as file:
        data = json.load(file)
    if LEGACY_METADATA in data:
        return {LEGACY_METADATA: data[LEGACY_METADATA]}
    return data.get(METADATA, {})


def read_config(path, base=None):
    """A TrainingConfig from a JSON file (a run's config.json, or any part of one written by hand),
    on top of `base` (default: the defaults)."""
    try:
        with open(path) as file:
            data = json.load(file)
    except OSError as error:
        raise UsageError(f"cannot read config file {path!r} ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"config file {path!r} is not valid JSON ({error.msg}, line {error.lineno})"
                         ) from None
    return TrainingConfig.from_dict(data, path, base)
