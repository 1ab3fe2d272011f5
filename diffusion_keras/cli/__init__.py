"""Command-line front ends: parse, call one library function, turn user errors into exit code 2."""

import argparse
import logging
import os
import sys
import traceback

from diffusion_keras.checks import positive_int_argument
from diffusion_keras.config import default_cache_dir
from diffusion_keras.errors import UsageError
from diffusion_keras.quiet import quiet_native_logs


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default after its help (lists as 32,64), unless it has none or the help
    already says it."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if default is None or default is False or default is argparse.SUPPRESS \
                or "default" in text:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and every default shown once in --help."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


EXTRAS = {"jax": "jax", "torch": "torch"}  # optional dependencies, as pyproject.toml names them


def missing_module(name):
    """What to install when importing Keras or its backend failed for want of `name`."""
    if name in EXTRAS:
        return (f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND', name)} needs {name}, which is not "
                f"installed for {sys.executable}; install it with pip install -e '.[{EXTRAS[name]}]' "
                "(in the project's .venv), or choose another KERAS_BACKEND")
    return (f"{name} is not installed for {sys.executable}; run the set-up command in README.md "
            "and use that environment's python (.venv/bin/python)")


def run(main_body, args, what="the command"):
    """Run a CLI body; a UsageError becomes 'error: ...' on stderr and exit code 2, a Ctrl-C or
    SIGTERM a request to stop at the next batch (`interrupts`), one line and exit code 130 (training
    says what it saved itself), not a traceback. In a multi-host run a process that fails ends
    the others (`distributed.end_process`)."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    # JAX keeps compiled programs there: a second run of the same model skips XLA's compilation
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", default_cache_dir("compiled"))
    try:
        with quiet_native_logs():
            import keras  # noqa: F401 (loads the backend quietly, once)
    except ModuleNotFoundError as error:
        print(f"error: {missing_module(error.name)}", file=sys.stderr)
        return 2
    from diffusion_keras import distributed, interrupts

    try:
        with interrupts.stop_requests(what):
            code = main_body(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted; files are written whole or not at all", file=sys.stderr)
        code = interrupts.EXIT_CODE
    except BaseException as error:
        if distributed.process_count() == 1:
            raise
        message = distributed.stopped_elsewhere() or distributed.lost_peer_message(error)
        if message:  # a collective fails when another process has left
            distributed.leave(1, message)
        traceback.print_exc()
        code = 1
    distributed.end_process(code)
    return code


def add_checkpoint_argument(parser):
    parser.add_argument("--checkpoint", help="a .keras file, or a run folder (its best.keras, else "
                                             "its newest epoch); default: the newest under runs/")


def add_sampling_arguments(parser, steps=20):
    """The sampler flags generate.py and evaluate.py share; `sampling_settings` reads them back."""
    from diffusion_keras.config import DEFAULT_SAMPLER, SAMPLER_NAMES, SPACINGS, VARIANCES

    group = parser.add_argument_group("sampling")
    group.add_argument("--sampler", choices=SAMPLER_NAMES,
                       help=f"dpmpp2m (DPM-Solver++(2M)), dpmpp3m, ddim, ddpm (ancestral) or heun "
                            f"(2 network calls a step); default: the model's, {DEFAULT_SAMPLER} "
                            "(ddim for a student made by distill.py)")
    group.add_argument("--steps", type=positive_int_argument, default=steps,
                       help="sampling steps (network calls; Heun: 2 x steps - 1)")
    group.add_argument("--spacing", choices=SPACINGS,
                       help="time grid (default: the sampler's most accurate, see docs/sampling.md)")
    group.add_argument("--eta", type=float, default=0.0,
                       help="DDIM noise: 0 deterministic, 1 like ancestral sampling")
    group.add_argument("--variance", choices=VARIANCES,
                       help="DDPM sigma^2: the posterior variance or beta_t (default: posterior)")
    return group


def add_ema_length_argument(parser, several=False):
    from diffusion_keras.checks import positive_float_argument, positive_float_list_argument

    what = ("relative EMA lengths to score one after the other, e.g. 0.03,0.05,0.1,0.15,0.2 (the "
            "best by FD is named last)" if several else "a relative EMA length, e.g. 0.1")
    parser.add_argument("--ema-length", type=positive_float_list_argument if several
                        else positive_float_argument,
                        help=f"post-hoc EMA: sample with the EMA of this length (a share of the "
                             f"training time), rebuilt from the run's snapshots (train.py "
                             f"--posthoc-ema); {what}")


def add_distribute_argument(parser):
    parser.add_argument("--distribute", action="store_true",
                        help="sample data-parallel on every local device (and host: see docs/scale.md), "
                             "with the JAX backend")


def sampler_options(args):
    """{option: value} of the sampler options given on the command line (eta, variance), checked
    before any model is loaded: each must be an option of the sampler `--sampler` names (given
    without it, which sampler it sets is not known until the model is: it must be named)."""
    from diffusion_keras.samplers import SAMPLERS, sampler_record

    given = {name: value for name, value in (("eta", args.eta or None),
                                             ("variance", args.variance)) if value is not None}
    for option in given:
        if args.sampler is None or option not in sampler_record(args.sampler).options:
            owner = next(name for name, other in SAMPLERS.items() if option in other.options)
            got = f" (got --sampler {args.sampler})" if args.sampler else ""
            raise UsageError(f"--{option} is a {owner.upper()} setting; drop it or use --sampler "
                             f"{owner}{got}")
    return given


def sampling_settings(args, model_config):
    """`generate`'s sampler settings from the flags: sampler (unset: `model_config`'s default),
    spacing and the chosen sampler's options (`sampler_options`; unset, the sampler's default)."""
    from diffusion_keras.samplers import sampler_record

    sampler = args.sampler or model_config.default_sampler
    record = sampler_record(sampler)
    given = sampler_options(args)
    options = {option: given.get(option, default)
               for option, default in record.option_defaults.items()}
    return {"sampler": sampler, "spacing": args.spacing or record.default_spacing, **options}
