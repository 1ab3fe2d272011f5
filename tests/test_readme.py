"""Every command README.md, BENCHMARKS.md and the docs/ pages show is accepted as written: its
script exists and its flags parse (docs/benchmark-history.md, a dated lab notebook, aside)."""

import glob
import importlib.util
import os
import re
import shlex
import sys

import pytest

from diffusion_keras import demo_images
from diffusion_keras.cli import bench, distill, evaluate, generate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {"train.py": train.parser, "generate.py": generate.parser,
           "evaluate.py": evaluate.parser, "bench.py": bench.parser, "distill.py": distill.parser}


PAGES = ["README.md", "BENCHMARKS.md", *sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    if not path.endswith("benchmark-history.md"))]


def benchmark_parser(script):
    """The argparse parser of a `benchmarks/` script that has one (`parser()`), else None."""
    if os.path.join(ROOT, "benchmarks") not in sys.path:  # as running the script puts it there
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(os.path.basename(script)[:-3],
                                                  os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "parser", lambda: None)()


def readme_commands():
    """(script, arguments) of every `python` command in the pages' code blocks and inline code."""
    text = ""
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as file:
            text += file.read()
    snippets = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    commands = []
    for snippet in snippets:
        for line in snippet.replace("\\\n", " ").splitlines():  # continued lines joined
            for command in line.split("&&"):
                words = shlex.split(command.split("#")[0])
                if words[-1:] == ["&"]:  # started in the background (the multi-host loop)
                    words = words[:-1]
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VARIABLE=value prefixes
                    words = words[1:]
                if len(words) >= 2 and words[0].endswith("python") and words[1] != "-c":
                    commands.append((words[1:3] if words[1] == "-m" else words[1:2],
                                     words[3:] if words[1] == "-m" else words[2:]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_the_main_commands():
    scripts = {script[-1] for script, _ in COMMANDS}
    assert {"train.py", "generate.py", "evaluate.py", "distill.py",
            "diffusion_keras.demo_images"} <= scripts


@pytest.mark.parametrize("script, arguments", COMMANDS, ids=[" ".join(s + a) for s, a in COMMANDS])
def test_readme_command_runs_as_written(script, arguments, tmp_path):
    if script[0] == "-m":
        if script[1] != "diffusion_keras.demo_images":  # venv, pytest
            return
        folder = str(tmp_path / "shapes")
        assert demo_images.main([folder, *arguments[1:], "--count", "4"]) == 0
        assert len(os.listdir(os.path.join(folder, "a"))) == 2
        return
    assert os.path.exists(os.path.join(ROOT, script[0])), f"{script[0]} is not in the repository"
    if script[0] in PARSERS:
        PARSERS[script[0]]().parse_args(arguments)  # a bad flag exits here with argparse's error
    elif script[0].startswith("benchmarks/") and benchmark_parser(script[0]) is not None:
        benchmark_parser(script[0]).parse_args(arguments)
