"""Run folders: where a training run keeps its checkpoints, samples and log, written atomically."""

import contextlib
import glob
import json
import os
import signal
import threading
import time
import zipfile
from typing import NamedTuple

import keras

from diffusion_keras.errors import UsageError

RUNS_ROOT = "runs"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path` and rename it into place only if the block succeeds.

    A crash at any moment leaves either the old file or the complete new one, never half of one.
    """
    directory, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(directory, f".{stem}.tmp{os.getpid()}{extension}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, data):
    with atomic_write(path) as temporary, open(temporary, "w") as file:
        json.dump(data, file, indent=2)


def new_run_dir(root=RUNS_ROOT):
    """A fresh `root/<timestamp>` path, checked creatable but not created: a run that fails to
    start leaves no folder behind (`prepare_run_dir` makes it once training starts)."""
    run_dir = os.path.join(root, time.strftime("%Y%m%d-%H%M%S"))
    suffix = 1
    while os.path.exists(run_dir):
        suffix += 1
        run_dir = os.path.join(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
    return check_creatable(run_dir, "run folder", "--run-dir")


def check_creatable(folder, what, flag):
    """`folder` if it is a writable folder, or could be created as one; else a one-line error."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a folder" if not os.path.isdir(existing) else "is not writable"
        raise UsageError(f"cannot write to {what} {folder!r}: {existing!r} {reason}; choose "
                         f"another {flag}")
    return folder


def prepare_run_dir(run_dir):
    """Create `run_dir` and its sub-folders; a clear error if it cannot be written."""
    try:
        for sub in (CHECKPOINT_DIR, SAMPLES_DIR):
            os.makedirs(os.path.join(run_dir, sub), exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as file:
            file.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"cannot write to run folder {run_dir!r} ({error.strerror}); "
                         "choose another --run-dir") from error
    return run_dir


def checkpoint_path(run_dir, epoch):
    return os.path.join(run_dir, CHECKPOINT_DIR, f"epoch_{epoch:04d}.keras")


def run_checkpoints(run_dir):
    """The run's epoch checkpoints, oldest first."""
    return sorted(glob.glob(os.path.join(run_dir, CHECKPOINT_DIR, "epoch_*.keras")))


def newest_checkpoint(root=RUNS_ROOT):
    """The most recently written epoch checkpoint of any run under `root`."""
    candidates = glob.glob(os.path.join(root, "*", CHECKPOINT_DIR, "epoch_*.keras"))
    if not candidates:
        raise UsageError(f"no checkpoints found under {root!r}; train a model first "
                         "(python train.py) or pass --checkpoint PATH")
    return max(candidates, key=os.path.getmtime)


def find_checkpoint(path=None):
    """The checkpoint a `--checkpoint` names: a .keras file as is; a run folder (or its
    checkpoints/ folder) gives its best.keras (lowest validation loss) or, without one, its newest
    epoch; nothing gives the newest epoch checkpoint under runs/."""
    if path is None:
        return newest_checkpoint()
    if not os.path.isdir(path):
        return path
    folder = path if os.path.basename(os.path.normpath(path)) == CHECKPOINT_DIR \
        else os.path.join(path, CHECKPOINT_DIR)
    best = os.path.join(folder, "best.keras")
    if os.path.isfile(best):
        return best
    epochs = sorted(glob.glob(os.path.join(folder, "epoch_*.keras")))
    if not epochs:
        raise UsageError(f"folder {path!r} holds no checkpoint (checkpoints/best.keras or "
                         "epoch_NNNN.keras); pass a run folder made by train.py or a .keras file")
    return epochs[-1]


def load_checkpoint(path, compile=False):
    """Load a DiffusionModel saved as `.keras`; a one-line error for missing or foreign files."""
    from diffusion_keras.model import DiffusionModel

    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist; pass the path of a .keras file "
                         "saved by train.py")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"checkpoint {path!r} could not be loaded as a diffusion_keras model "
                         f"({type(error).__name__}); it may be truncated or from another program"
                         ) from error
    if not isinstance(model, DiffusionModel):
        raise UsageError(f"checkpoint {path!r} holds a {type(model).__name__}, not a "
                         "diffusion_keras DiffusionModel")
    return model


def checkpoint_epoch(path):
    """The epoch number in an `epoch_NNNN.keras` name."""
    return int(os.path.basename(path)[len("epoch_"):-len(".keras")])


@contextlib.contextmanager
def finish_before_stopping():
    """Let a Ctrl-C or SIGTERM that arrives inside the block wait for its end, then stop with
    KeyboardInterrupt: a checkpoint being written (atomic, seconds) is finished, not thrown away.
    Signals are only caught in the main thread; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    handlers = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    if received:
        raise KeyboardInterrupt


def read_json(path, what):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {what} {path!r} ({type(error).__name__}); pass the folder "
                         "of a run made by train.py") from error


def newest_run(root=RUNS_ROOT):
    """The run under `root` with a checkpoint to resume from, written to most recently (its config
    or newest checkpoint); runs that never completed an epoch are passed over."""
    candidates = [os.path.dirname(config) for config in glob.glob(os.path.join(root, "*", "config.json"))]
    candidates = [run_dir for run_dir in candidates if run_checkpoints(run_dir)]
    if not candidates:
        raise UsageError(f"no run under {root!r} has a checkpoint to resume from; pass --resume "
                         "RUN_DIR or start a new run")
    return max(candidates, key=last_written)


def last_written(run_dir):
    paths = [os.path.join(run_dir, "config.json"), *run_checkpoints(run_dir)]
    return max(os.path.getmtime(path) for path in paths)


class ResumePoint(NamedTuple):
    """Where an interrupted run continues: a model loaded with its optimizer state, the epoch it
    completed, the log rows up to that epoch, and (path, reason) of newer checkpoints skipped."""
    model: keras.Model
    epoch: int
    history: list
    skipped: list


def resume_point(run_dir):
    """The newest loadable checkpoint of `run_dir`; corrupt or truncated newer ones are skipped.

    Log rows after that epoch are dropped: those epochs are trained again, so none is logged twice.
    """
    skipped = []
    for path in reversed(run_checkpoints(run_dir)):
        try:
            model = load_checkpoint(path, compile=True)
        except UsageError as error:
            skipped.append((path, str(error)))
            continue
        epoch = checkpoint_epoch(path)
        log_path = os.path.join(run_dir, "log.json")
        rows = read_json(log_path, "training log") if os.path.exists(log_path) else []
        return ResumePoint(model, epoch, [row for row in rows if row["epoch"] <= epoch], skipped)
    raise UsageError(f"run folder {run_dir!r} holds no loadable epoch checkpoint to resume from "
                     f"({len(skipped)} unreadable); start a new run instead")
