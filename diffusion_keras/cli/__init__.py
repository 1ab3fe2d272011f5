"""Command-line front ends: parse, call one library function, turn user errors into exit code 2."""

import argparse
import logging
import sys

from diffusion_keras.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and every default shown in --help."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive(kind, what):
    """An argparse type: a `kind` (int or float) > 0, with a one-line error otherwise."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {what}, got {value}")
        return value

    return parse


positive_int = positive(int, "integer")
positive_float = positive(float, "number")


def int_list(text):
    """argparse type: comma-separated positive integers, e.g. 32,64,96,128 ('' for none)."""
    if not text.strip():
        return []
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers, got {text!r}")
    return values


def run(main_body, args):
    """Run a CLI body; a UsageError becomes 'error: ...' on stderr and exit code 2, a Ctrl-C
    (outside training, which handles its own) one line and exit code 130, not a traceback."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    try:
        return main_body(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files are written whole or not at all", file=sys.stderr)
        return 130
