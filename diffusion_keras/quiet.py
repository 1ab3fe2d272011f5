"""TensorFlow's native start-up lines (oneDNN, CUDA stubs, absl) kept off the terminal.

TensorFlow writes them to the stderr file descriptor while its libraries load, before it reads
TF_CPP_MIN_LOG_LEVEL, and Keras loads it wherever it is installed, whichever backend runs (its
`set_random_seed` seeds TensorFlow too). Importing this module sets the level for what comes after.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # overridable from the environment


@contextlib.contextmanager
def quiet_native_logs():
    """Send what native code writes to the stderr file descriptor to /dev/null for the block;
    Python's own errors are printed after the block, so none is hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def set_random_seed(seed):
    """`keras.utils.set_random_seed`, quietly: it loads TensorFlow where installed."""
    import keras

    with quiet_native_logs():
        keras.utils.set_random_seed(seed)
