"""Input checks, one home for the library and the command lines.

Each check takes a value and what it is ("learning rate") and raises a one-line `UsageError`
naming both, before any work is done; `argument(parse, check)` turns one into an argparse type, so
a flag and the same setting passed from Python fail with the same words. No Keras here: the
command lines check their flags before loading it.
"""

import argparse
import math

import numpy as np

from diffusion_keras.errors import UsageError


def _fail(what, text):
    raise UsageError(f"{what} {text}".strip())


def choice(value, choices, what):
    if value not in choices:
        _fail("", f"unknown {what} {value!r}; choose one of {list(choices)}")


def number(value, what, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """A finite number in the given range (None where `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        _fail(what, f"must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if low == 0 and high is None and too_low:
        _fail(what, f"must be {'positive' if low_open else 'non-negative'}, got {value}")
    if too_low or too_high:
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(what, f"must be in {span}, got {value}")


def integer(value, what, low, allow_none=False):
    """An integer (not a bool) of at least `low` (None where `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a positive integer" if low == 1 else "a non-negative integer"
        _fail(what, f"must be {kind}, got {value!r}")


def positive_int(value, what, allow_none=False):
    integer(value, what, 1, allow_none)


def seed(value, allow_none=False):
    integer(value, "seed", 0, allow_none)


def guidance(value):
    """A classifier-free guidance weight: finite and >= 0 (checked eagerly: inside the compiled
    loop a bad one would only show as bad images)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        _fail("guidance", "must be a non-negative number (0: unconditional, 1: conditional, above "
                          f"1: stronger), got {value!r}")


def class_names(names):
    """Unique non-empty strings: a model's classes, index i being names[i]."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        _fail("class names", f"must be a list of strings, got {names!r}")
    if not all(isinstance(name, str) and name for name in names):
        _fail("class names", f"must be non-empty strings, got {list(names)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        _fail("class names", f"must be unique; repeated: {repeated}")


def argument(parse, check):
    """An argparse type: `parse(text)` (int, float, or `comma_separated(int)`), then `check(value,
    "")` on the value (each element of a list), with the check's words as argparse's error."""
    def parse_and_check(text):
        try:
            value = parse(text)
        except ValueError:
            kind = getattr(parse, "__name__", "value")
            raise argparse.ArgumentTypeError(f"must be {KINDS.get(kind, kind)}, got {text!r}") \
                from None
        try:
            for element in value if isinstance(value, list) else [value]:
                check(element, "")
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    return parse_and_check


def comma_separated(kind, allow_empty=True):
    """A parser of comma-separated `kind`s, e.g. 32,64,96,128 ('' for none where `allow_empty`)."""
    def parse(text):
        if not text.strip() and allow_empty:
            return []
        return [kind(part) for part in text.split(",")]  # '' is a ValueError

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


KINDS = {"int": "an integer", "float": "a number", "comma-separated int": "comma-separated integers",
         "comma-separated float": "comma-separated numbers"}

# the argparse types the command lines share
positive_int_argument = argument(int, positive_int)
non_negative_int_argument = argument(int, lambda value, what: integer(value, what, 0))
positive_float_argument = argument(float, lambda value, what: number(value, what, 0, low_open=True))
positive_int_list_argument = argument(comma_separated(int), positive_int)
non_negative_float_list_argument = argument(comma_separated(float, allow_empty=False),
                                            lambda value, what: number(value, what, 0))
positive_float_list_argument = argument(comma_separated(float, allow_empty=False),
                                        lambda value, what: number(value, what, 0, low_open=True))
