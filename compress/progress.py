"""Progress a person can follow: plain one-line messages on stderr, per phase and per epoch.

Progress is off in the Python API (no surprise output) and on in the CLI when stderr is
a terminal; ``--quiet`` turns it off, and ``COMPRESS_PROGRESS=1`` turns it on where
stderr is not a terminal (logs, CI). Lines are plain text (no escape codes), so they read
the same in a terminal, a pipe or a log file, and they never touch stdout: ``--json``
output stays pure JSON.

Example:

>>> import io, contextlib
>>> err = io.StringIO()
>>> with enabled(True), contextlib.redirect_stderr(err):
...     say("loading model.keras")
>>> err.getvalue()
'compress: loading model.keras\\n'
>>> say("not printed: progress is off outside enabled(True)")
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time

_ON: contextvars.ContextVar = contextvars.ContextVar("compress_progress", default=False)
_QUIET: contextvars.ContextVar = contextvars.ContextVar("compress_quiet", default=False)


def is_on() -> bool:
    """Whether progress lines are printed here."""
    return _ON.get()


def default_for_cli(quiet: bool = False) -> bool:
    """The CLI's default: on when stderr is a terminal or ``COMPRESS_PROGRESS=1``, off with
    ``--quiet`` or ``COMPRESS_PROGRESS=0``."""
    if quiet:
        return False
    forced = os.environ.get("COMPRESS_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def set_on(value: bool, quiet: bool = False) -> None:
    """Turn progress on or off for the rest of this context (the CLI calls it once);
    ``quiet`` records the user's ``--quiet`` (Keras's own output is silenced too)."""
    _ON.set(bool(value))
    _QUIET.set(bool(quiet))


def is_quiet() -> bool:
    """Whether the user asked for no progress at all (``--quiet``)."""
    return _QUIET.get()


@contextlib.contextmanager
def enabled(value: bool = True):
    """Progress on (or off) inside the block."""
    token = _ON.set(bool(value))
    try:
        yield
    finally:
        _ON.reset(token)


def say(message: str) -> None:
    """Print ``compress: message`` on stderr now, if progress is on."""
    if _ON.get():
        print(f"compress: {message}", file=sys.stderr, flush=True)


def _fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def epoch_callback(callbacks=(), what: str = "training"):
    """A Keras callback printing one plain line per epoch: the epoch, its loss and
    validation numbers, the current sparsity of a pruning schedule among ``callbacks``
    (one with ``target_sparsity`` and ``current``), the epoch's time and the ETA of this
    fit. ``training.fit_model`` adds it when progress is on and Keras's own bar is off.
    """
    import keras

    schedule = next((c for c in callbacks
                     if hasattr(c, "target_sparsity") and hasattr(c, "current")), None)

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._t0 = time.perf_counter()
            self._epochs = self.params.get("epochs") or 0
            self._first = None

        def on_epoch_begin(self, epoch, logs=None):
            if self._first is None:
                self._first = epoch  # a resumed fit starts later; its ETA counts from here
            self._te = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            done = epoch + 1 - self._first
            per = (now - self._t0) / max(done, 1)
            left = max(self._epochs - epoch - 1, 0)
            parts = [f"{what}: epoch {epoch + 1}/{self._epochs}"]
            for key, value in (logs or {}).items():
                if isinstance(value, (int, float)) and key != "learning_rate":
                    parts.append(f"{key} {value:.4g}")
            if schedule is not None:
                parts.append(f"sparsity {float(schedule.current):.1%}")
            parts.append(f"{_fmt_seconds(now - self._te)}/epoch")
            if left:
                parts.append(f"ETA {_fmt_seconds(per * left)}")
            say(", ".join(parts))

    return EpochProgress()
