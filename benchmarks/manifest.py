"""One folder per benchmark run, `benchmarks/results/<date>-<name>/`, with a manifest.json that says
what made its rows: the commit (and whether the tree had uncommitted changes), the command, the
machine (CPU model and the flags that decide speed), the backend, precision and library versions."""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu():
    """{"model": ..., "flags": [...the SPEED_FLAGS it has], "cores": N} from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [flag for flag in SPEED_FLAGS if flag in flags],
            "cores": os.cpu_count()}


def commit():
    """The checked-out commit, with "+changes" when the tree differs from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=os.path.dirname(RESULTS_ROOT)).stdout.strip()
        except OSError:  # no git there (the GPU machine gets the files, not the history)
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine():
    """Where the rows were made: the CPU, the backend, its default precision and versions."""
    import keras

    from diffusion_keras import backend

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    for name in ("tensorflow", "jax", "torch"):
        if name in sys.modules:
            versions[name] = sys.modules[name].__version__
    return {"cpu": cpu(), "device": backend.device_name(), "backend": backend.BACKEND,
            "default_precision": backend.default_dtype_policy(), "versions": versions}


def open_results(name, root=RESULTS_ROOT, argv=None):
    """The folder `root/<today>-<name>` (made now), with its manifest written; a second run of the
    same name on the same day gets its own folder (`-2`, `-3`...) rather than mixing rows."""
    base = os.path.join(root, f"{datetime.date.today().isoformat()}-{name}")
    folder, number = base, 1
    while os.path.exists(folder):
        number += 1
        folder = f"{base}-{number}"
    os.makedirs(folder)
    argv = sys.argv if argv is None else argv
    manifest = {"name": name, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "commit": commit(), "command": shlex.join(argv), "machine": machine()}
    with open(os.path.join(folder, "manifest.json"), "w") as file:
        json.dump(manifest, file, indent=2)
    return folder
