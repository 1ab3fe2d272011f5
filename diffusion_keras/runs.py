"""Run folders: where a training run keeps its checkpoints, samples and log, written atomically."""

import contextlib
import glob
import json
import os
import re
import shutil
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


TEMPORARY_NAME = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")  # what `atomic_write` names them


def remove_stale_temporaries(folder):
    """Delete the temporaries (`atomic_write`'s files, staged folders) left under `folder` by
    processes that no longer run (killed outright, so no `finally` ran); those of live processes
    stay."""
    for root, folders, names in os.walk(folder):
        for name in [*folders, *names]:
            match = TEMPORARY_NAME.match(name)
            if match and not process_alive(int(match.group(1))):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                if name in folders:
                    folders.remove(name)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_model(model, path):
    """`model.save(path)`, atomically, by this process alone (also in a multi-host run)."""
    from diffusion_keras import distributed

    with atomic_write(path) as temporary, distributed.locally():
        model.save(temporary)
    return path


def write_json(path, data):
    with atomic_write(path) as temporary, open(temporary, "w") as file:
        json.dump(data, file, indent=2)


def new_run_dir(root=RUNS_ROOT):
    """A fresh `root/<timestamp>` folder, claimed (made) at once, so two runs started in the same
    second get two folders; `release_run_dir` removes it again if the run cannot start."""
    check_creatable(root, "runs folder", "--run-dir")
    os.makedirs(root, exist_ok=True)
    stamp, suffix = time.strftime("%Y%m%d-%H%M%S"), 1
    while True:
        run_dir = os.path.join(root, stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            os.mkdir(run_dir)
            return run_dir
        except FileExistsError:
            suffix += 1


def release_run_dir(run_dir):
    """Remove a claimed run folder that is still empty (its run never started)."""
    with contextlib.suppress(OSError):
        os.rmdir(run_dir)


def check_creatable(folder, what, flag):
    """`folder` if it is a writable folder, or could be created as one; else a one-line error."""
    if os.path.islink(folder) and not os.path.exists(folder):
        raise UsageError(f"cannot write to {what} {folder!r}: it is a link to nothing; choose "
                         f"another {flag}")
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a folder" if not os.path.isdir(existing) else "is not writable"
        raise UsageError(f"cannot write to {what} {folder!r}: {existing!r} {reason}; choose "
                         f"another {flag}")
    return folder


def holds_run(run_dir):
    return os.path.lexists(os.path.join(run_dir, "config.json"))


def check_new_run_dir(run_dir):
    """`run_dir` if a new run may be written there: creatable, and holding no run yet."""
    check_creatable(run_dir, "run folder", "--run-dir")
    if holds_run(run_dir):
        raise UsageError(f"run folder {run_dir!r} already holds a run; continue it with --resume "
                         f"{run_dir}, or choose another --run-dir (or delete it)")
    return run_dir


def claim_run_dir(run_dir):
    """Make `run_dir` a new run's folder: its config.json is created exclusively, so two runs never
    share a folder and a folder that holds a run is refused."""
    check_new_run_dir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        os.close(os.open(os.path.join(run_dir, "config.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        check_new_run_dir(run_dir)  # another run claimed it first: says so
        raise
    except OSError as error:
        raise UsageError(f"cannot write to run folder {run_dir!r} ({error.strerror}); "
                         "choose another --run-dir") from error
    return run_dir


def prepare_run_dir(run_dir):
    """Create `run_dir`'s sub-folders; a clear error if it cannot be written."""
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
    from diffusion_keras import distillation  # noqa: F401 (registers Student, for students)
    from diffusion_keras.model import DiffusionModel

    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist; pass the path of a .keras file "
                         "saved by train.py")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        if "safe_mode" in str(error):
            raise UsageError(f"checkpoint {path!r} holds code (a Lambda layer or the like) that "
                             "Keras' safe mode will not run; a diffusion_keras checkpoint holds "
                             "none: use one saved by train.py") from error
        raise UsageError(f"checkpoint {path!r} could not be loaded as a diffusion_keras model "
                         f"({type(error).__name__}); it may be truncated or from another program"
                         ) from error
    if not isinstance(model, DiffusionModel):
        raise UsageError(f"checkpoint {path!r} holds a {type(model).__name__}, not a "
                         "diffusion_keras DiffusionModel")
    return model


def saved_model_config(path):
    """The `ModelConfig` a .keras checkpoint holds, read from its config without building the
    model (to check sampling settings before any work); a one-line error for other files."""
    from diffusion_keras.config import ModelConfig

    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist; pass the path of a .keras file "
                         "saved by train.py")
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))["config"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise UsageError(f"checkpoint {path!r} could not be read as a diffusion_keras model "
                         f"({type(error).__name__}); pass a .keras file saved by train.py"
                         ) from error
    return ModelConfig.from_dict({name: value for name, value in saved.items()
                                  if name in ModelConfig.field_names()}, path)


def checkpoint_epoch(path):
    """The epoch number in an `epoch_NNNN.keras` name."""
    return int(os.path.basename(path)[len("epoch_"):-len(".keras")])


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
