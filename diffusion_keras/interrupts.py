"""Ctrl-C and SIGTERM as requests to stop at the next batch, not exceptions at any instruction.

Python raises KeyboardInterrupt wherever the main thread happens to be: inside a garbage-collection
callback (JAX registers some) it is printed as "Exception ignored" and lost, and while a compiled
step or sampling loop runs it waits, silently, until the loop returns. While `stop_requests()` is
active (the command lines), a signal instead sets a flag: a watcher thread, woken by the signal
itself even while the main thread is inside compiled code, says at once that the command will stop,
training stops at the next batch (`StopOnRequest`) and sampling at the next batch (`check`), and a
second signal ends the process at once (files are written atomically, so none is left half-written;
stale temporaries are cleaned at the next start, see `runs.remove_stale_temporaries`).
"""

import contextlib
import os
import signal
import sys
import threading

import keras

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130  # what shells report for a Ctrl-C

_requests = []  # signal numbers received while `stop_requests` is active
_active = []  # non-empty while `stop_requests` is active


def requested():
    """Whether a stop was asked for."""
    return bool(_requests)


def check():
    """Stop (KeyboardInterrupt) here if a stop was asked for: a safe point between batches."""
    if _requests:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_requests(what="the command"):
    """Turn SIGINT/SIGTERM into stop requests inside the block (main thread only; elsewhere the
    block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_handlers = {number: signal.signal(number, lambda signum, frame: None)
                         for number in SIGNALS}
    previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_end, what), daemon=True,
                               name="diffusion_keras-signals")
    watcher.start()
    _active.append(what)
    try:
        yield
    finally:
        _active.clear()
        signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous_handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        os.close(write_end)  # ends the watcher
        watcher.join()
        os.close(read_end)
        _requests.clear()


def reclaim_signals():
    """Install this process's Python signal handlers again over any a library set natively since."""
    if threading.current_thread() is threading.main_thread():
        for number in SIGNALS:
            signal.signal(number, signal.getsignal(number))


def _watch(read_end, what):
    while received := os.read(read_end, 64):
        for number in received:
            if number not in SIGNALS:
                continue
            _requests.append(number)
            if len(_requests) == 1:
                print(f"\nstopping {what} at the next batch (press Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)
            else:
                print("\nstopped at once", file=sys.stderr, flush=True)
                os._exit(EXIT_CODE)


@contextlib.contextmanager
def deferred():
    """Let a Ctrl-C or SIGTERM that arrives inside the block wait for its end, then stop with
    KeyboardInterrupt: a checkpoint being written (atomic, seconds) is finished, not thrown away.
    Under `stop_requests` signals are requests already, and the block runs as is; signals are only
    caught in the main thread."""
    if _active:
        yield
        check()
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    handlers = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    if received:
        raise KeyboardInterrupt


class StopOnRequest(keras.callbacks.Callback):
    """Stop training at the next batch once a stop was asked for (`stop_requests`)."""

    def on_train_batch_begin(self, batch, logs=None):
        check()

    def on_train_batch_end(self, batch, logs=None):
        check()
