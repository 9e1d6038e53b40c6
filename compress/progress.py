"""Progress a person can follow, on stderr: one display per phase and an overall ETA.

Progress is off in the Python API (no surprise output) and on in the CLI when stderr is
a terminal; ``--quiet`` turns it off, and ``COMPRESS_PROGRESS=1`` turns it on where
stderr is not a terminal (logs, CI). It never touches stdout: ``--json`` stays pure JSON.

A command's work is a sequence of *phases* (loading, saliency, training, conversion,
verification, ...). Each phase is one display: in a terminal a single line redrawn in
place (``\\r``) with a bar, ``n/total``, the phase's elapsed time and ETA and the
command's overall ETA, ended by a final line; elsewhere plain lines without escape codes
or ``\\r``: a start line, at most one line every :data:`PLAIN_INTERVAL` seconds (and
one per epoch), and a done line with the phase's time. The overall ETA comes from the
command's *plan*: the phases it expects, with rough weights (:func:`expect`), and the
seconds per unit of weight measured on the phases run so far.

Example:

>>> import io
>>> err = io.StringIO()
>>> with enabled(True, stream=err):
...     with phase("calibration", total=4, unit="batch") as p:
...         for _ in range(4):
...             p.advance()
>>> err.getvalue().splitlines()[0]
'compress: calibration: started (4 batches)'
>>> err.getvalue().splitlines()[-1].startswith('compress: calibration: done in ')
True
>>> say("not printed: progress is off outside enabled(True)")
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time

TTY_INTERVAL = 0.1  # seconds between redraws of a terminal line (cheap per training step)
PLAIN_INTERVAL = 5.0  # seconds between plain lines inside a phase (epoch lines always print)
BAR = 20  # characters of the terminal bar

clock = time.monotonic  # the time source; tests replace it with a fake clock

_ON: contextvars.ContextVar = contextvars.ContextVar("compress_progress", default=False)
_QUIET: contextvars.ContextVar = contextvars.ContextVar("compress_quiet", default=False)
_STREAM: contextvars.ContextVar = contextvars.ContextVar("compress_progress_stream",
                                                         default=None)
_PLAN: contextvars.ContextVar = contextvars.ContextVar("compress_progress_plan", default=None)
_KERAS_TO_STDERR: contextvars.ContextVar = contextvars.ContextVar("compress_keras_to_stderr",
                                                                  default=False)
_OPEN: list = []  # open phases, innermost last (one process, one terminal)
_LOCK = threading.RLock()
_LIVE = {"stream": None, "text": "", "width": 0}  # the terminal line being redrawn
_SAVED_STDERR = []  # a duplicate of fd 2, so that quiet_output() does not swallow progress


def is_on() -> bool:
    """Whether progress is printed here."""
    return _ON.get()


def default_for_cli(quiet: bool = False) -> bool:
    """The CLI's default: on when stderr is a terminal or ``COMPRESS_PROGRESS=1``, off with
    ``--quiet`` or ``COMPRESS_PROGRESS=0``."""
    if quiet:
        return False
    forced = os.environ.get("COMPRESS_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return isatty(sys.stderr)


def set_on(value: bool, quiet: bool = False) -> None:
    """Turn progress on or off for the rest of this context and start a new plan (the CLI
    calls it once per command); ``quiet`` records the user's ``--quiet``."""
    _ON.set(bool(value))
    _QUIET.set(bool(quiet))
    _PLAN.set(Plan() if value else None)
    _KERAS_TO_STDERR.set(False)
    if value and not _SAVED_STDERR and sys.stderr is sys.__stderr__:
        try:  # native converters' output is silenced by redirecting fd 2: keep our own
            _SAVED_STDERR.append(os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1,
                                           encoding=sys.stderr.encoding or "utf-8",
                                           errors="replace"))
        except (AttributeError, OSError, ValueError):
            _SAVED_STDERR.append(None)


def keras_lines_to_stderr() -> None:
    """Send the lines Keras prints during fits (``verbose=2``: one per epoch) to stderr
    for the rest of this command: the CLI's stdout holds its report (or JSON) only.
    :func:`set_on` (a new command) turns it off again."""
    _KERAS_TO_STDERR.set(True)


def keras_output():
    """A context in which Keras's printed lines go where :func:`keras_lines_to_stderr`
    says (it writes them to ``sys.stdout``)."""
    if _KERAS_TO_STDERR.get():
        return contextlib.redirect_stdout(sys.stderr)
    return contextlib.nullcontext()


def is_quiet() -> bool:
    """Whether the user asked for no progress at all (``--quiet``)."""
    return _QUIET.get()


@contextlib.contextmanager
def enabled(value: bool = True, stream=None, plan: bool = False):
    """Progress on (or off) inside the block; ``stream`` (default stderr) receives it, a
    terminal when its ``isatty()`` is true; ``plan=True`` starts a plan (overall ETA)."""
    tokens = [(_ON, _ON.set(bool(value))), (_STREAM, _STREAM.set(stream))]
    if plan:
        tokens.append((_PLAN, _PLAN.set(Plan())))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def isatty(stream) -> bool:
    """Whether ``stream`` is a terminal (False for anything without a real one)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _real_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _stream():
    chosen = _STREAM.get()
    if chosen is not None:
        return chosen
    if sys.stderr is sys.__stderr__ and _SAVED_STDERR and _SAVED_STDERR[0] is not None:
        return _SAVED_STDERR[0]
    return sys.stderr


def _write(stream, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # a closed pipe must not stop the work
        pass


def clear_line() -> None:
    """Wipe the terminal line being redrawn, so that other output starts on a clean line
    (the phase redraws it at its next update)."""
    with _LOCK:
        if _LIVE["stream"] is not None and _LIVE["width"]:
            _write(_LIVE["stream"], "\r" + " " * _LIVE["width"] + "\r")
        _LIVE.update(stream=None, text="", width=0)


def _draw(stream, text: str, final: bool = False) -> None:
    """Redraw the terminal line in place (spaces erase a longer previous text)."""
    with _LOCK:
        try:  # a wrapped line cannot be redrawn with \r: cut it to the terminal's width
            text = text[:max(os.get_terminal_size(stream.fileno()).columns - 1, 20)]
        except (AttributeError, OSError, ValueError):
            pass
        pad = max(_LIVE["width"] - len(text), 0) if _LIVE["stream"] is stream else 0
        _write(stream, "\r" + text + " " * pad + ("\n" if final else ""))
        if final:
            _LIVE.update(stream=None, text="", width=0)
        else:
            _LIVE.update(stream=stream, text=text, width=len(text))


def say(message: str) -> None:
    """Print ``compress: message`` on stderr now, if progress is on (in a terminal, above
    the phase line being redrawn)."""
    if not _ON.get():
        return
    stream = _stream()
    with _LOCK:
        live = _LIVE["text"] if _LIVE["stream"] is stream else ""
        clear_line()
        _write(stream, f"compress: {message}\n")
        if live:
            _draw(stream, live)


def fmt_seconds(s: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


_fmt_seconds = fmt_seconds


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "tch", "x")) else "s")


class _Entry:
    def __init__(self, weight: float, runs: int, fixed: bool):
        self.weight, self.runs, self.fixed = float(weight), max(int(runs), 1), fixed
        self.finished, self.seconds = 0, 0.0


class Plan:
    """The phases a command expects, with rough weights, and what they took: the
    overall ETA.

    Seconds per unit of weight are measured on the finished runs of phases (those not
    ``fixed``: loading's time is start-up, not work) and on the running phase; the ETA
    is the running phase's own ETA plus the weight left in the others at that rate.

    Example:

    >>> plan = Plan(start=0.0)
    >>> plan.expect("saliency", 2)
    >>> plan.expect("training", 4)
    >>> plan.finish("saliency", seconds=10.0)   # 5 s per unit of weight
    >>> plan.eta(now=10.0)                      # training's 4 units left
    20.0
    """

    def __init__(self, start: float | None = None):
        self.start = clock() if start is None else start
        self.entries: dict[str, _Entry] = {}

    def expect(self, name: str, weight: float = 1.0, runs: int = 1,
               fixed: bool = False) -> None:
        """Phase ``name`` is coming: ``weight`` for all its ``runs`` together (training:
        the epochs, over the fits that share them). Declaring it again refines it."""
        entry = self.entries.get(name)
        if entry is None:
            self.entries[name] = _Entry(weight, runs, fixed)
        else:
            entry.weight, entry.runs = float(weight), max(int(runs), entry.finished, 1)

    def entry(self, name: str, fixed: bool = False) -> _Entry:
        if name not in self.entries:
            self.entries[name] = _Entry(1.0, 1, fixed)
        return self.entries[name]

    def finish(self, name: str, seconds: float) -> None:
        """One run of ``name`` ended after ``seconds``."""
        entry = self.entry(name)
        entry.finished += 1
        entry.runs = max(entry.runs, entry.finished)
        entry.seconds += seconds

    def eta(self, now: float | None = None, current: Phase | None = None) -> float | None:
        """Seconds left for the whole plan, or None before anything was measured."""
        now = clock() if now is None else now
        cur_entry = self.entries.get(current.name) if current is not None else None
        share = cur_entry.weight / cur_entry.runs if cur_entry is not None and \
            cur_entry.finished < cur_entry.runs else 0.0
        frac = current.fraction() if current is not None else None
        run_elapsed = now - current.start if current is not None else 0.0
        entries = list(self.entries.values())  # the ticker thread reads it too
        w_done = sum(e.weight * e.finished / e.runs for e in entries if not e.fixed)
        s_done = sum(e.seconds for e in entries if not e.fixed)
        if cur_entry is not None and not cur_entry.fixed and frac:
            w_done += frac * share
            s_done += run_elapsed
        if w_done <= 0:
            return None
        rate = s_done / w_done
        rest = sum(e.weight * max(e.runs - e.finished, 0) / e.runs for e in entries) - share
        left = current.eta(now) if current is not None else 0.0
        if left is None:  # a phase without steps: its weight at the measured rate
            left = max(share * rate - run_elapsed, 0.0)
        return left + max(rest, 0.0) * rate


def expect(name: str, weight: float = 1.0, runs: int = 1, fixed: bool = False) -> None:
    """Declare a coming phase in the command's plan (:meth:`Plan.expect`); nothing when
    progress is off."""
    plan = _PLAN.get()
    if plan is not None and _ON.get():
        plan.expect(name, weight, runs, fixed)


class Phase:
    """One phase's display. Made by :func:`phase`; its methods do nothing when progress
    is off, and redraw at most every :data:`TTY_INTERVAL` s in a terminal (plain lines:
    every :data:`PLAIN_INTERVAL` s, or when ``line=True``)."""

    def __init__(self, name, total=None, unit="step", detail="", steps=True, fixed=False,
                 stream=None, on=True):
        self.name, self.total, self.unit, self.detail = name, total, unit, detail
        self.steps, self.fixed, self.on = steps, fixed, on
        self.n = 0
        self.status = ""  # replaces "n/total units" in the line (training: the epoch)
        self.position = None  # fraction done, when it is not n/total (epochs and steps)
        self.start = clock()
        self._from = 0.0  # the fraction at which timing started (a resumed fit)
        self._stream = stream
        self._tty = on and isatty(stream)
        self._last = self.start
        self._plan = _PLAN.get() if on else None

    # -- what the code being measured calls ------------------------------------------
    def advance(self, k: int = 1, line: bool = False) -> None:
        """``k`` more steps done."""
        self.n += k
        if self.on:
            self.refresh(line)

    def update(self, n: int, total: int | None = None, unit: str | None = None,
               line: bool = False) -> None:
        """``n`` of ``total`` steps done."""
        self.n = n
        if total is not None:
            self.total = total
        if unit:
            self.unit = unit
        if self.on:
            self.refresh(line)

    def due(self) -> bool:
        """Whether a redraw would show now (a cheap test for per-step callers)."""
        if not self.on:
            return False
        return clock() - self._last >= (TTY_INTERVAL if self._tty else PLAIN_INTERVAL)

    def refresh(self, line: bool = False) -> None:
        """Redraw (a terminal) or print a line (plain), if due or ``line``."""
        if not self.on or not (line or self.due()):
            return
        self._last = now = clock()
        if self._tty:
            _draw(self._stream, self.text(now))
        else:
            _write(self._stream, self.text(now) + "\n")

    # -- arithmetic ----------------------------------------------------------------------
    def fraction(self) -> float | None:
        if self.position is not None:
            return min(max(float(self.position), 0.0), 1.0)
        if self.total:
            return min(self.n / self.total, 1.0)
        return None

    def restart_timing(self) -> None:
        """Time the ETA from the current position (a fit resumed at a later epoch)."""
        self._from = self.fraction() or 0.0
        self.start = clock()

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left in this phase, from its own pace; None before its first step."""
        frac = self.fraction()
        if frac is None or frac <= self._from:
            return None
        now = clock() if now is None else now
        return (now - self.start) * (1.0 - frac) / (frac - self._from)

    def overall_eta(self, now: float | None = None) -> float | None:
        return self._plan.eta(now, self) if self._plan is not None else None

    # -- text ----------------------------------------------------------------------------
    def _counts(self) -> str:
        if self.status:
            return self.status
        if self.total:
            return f"{self.n}/{self.total} {_plural(self.unit)}"
        return f"{self.n} {_plural(self.unit)}" if self.n else ""

    def _terminal_parts(self, now: float, times: str) -> str:
        """``name [bar] pct | times | counts (detail)``: the times before the details,
        so that a line cut to the terminal's width keeps them."""
        frac, counts = self.fraction(), self._counts()
        head = f"compress: {self.name}"
        if frac is not None:
            full = round(frac * BAR)
            head += f" [{'#' * full}{'.' * (BAR - full)}] {frac:4.0%}"
        body = " ".join(p for p in (counts, f"({self.detail})" if counts and self.detail
                                    else self.detail) if p)
        return " | ".join(p for p in (head, times, body) if p)

    def text(self, now: float) -> str:
        """The phase's line now (a terminal's, or a plain one)."""
        frac, eta, overall = self.fraction(), self.eta(now), self.overall_eta(now)
        times = []
        if eta is not None and frac is not None and frac < 1:
            times.append(f"ETA {fmt_seconds(eta)}")
        if overall is not None and overall > 0:
            times.append(f"overall ETA {fmt_seconds(overall)}")
        if self._tty:
            return self._terminal_parts(now, ", ".join([fmt_seconds(now - self.start)]
                                                       + times))
        counts = self._counts()
        parts = [counts or self.detail]
        if frac is not None and not self.status:
            parts[-1] += f" ({frac:.0%})"
        return f"compress: {self.name}: " + ", ".join(p for p in parts + times if p)

    # -- start and end -------------------------------------------------------------------
    def open(self) -> Phase:
        if not self.on:
            return self
        with _LOCK:
            if _OPEN and self._tty:
                clear_line()  # an inner phase takes the line; the outer redraws later
            _OPEN.append(self)
        if self._plan is not None:
            self._plan.entry(self.name, self.fixed)
        if self._tty:
            _draw(self._stream, self.text(clock()))
            if _real_fd(self._stream):  # a real terminal, not a test's stream
                _ticker()
        else:
            what = self.detail or "started"
            if self.total:
                what += f" ({self.total} {_plural(self.unit)})"
            _write(self._stream, f"compress: {self.name}: {what}\n")
        return self

    def close(self, ok: bool = True) -> None:
        if not self.on or self not in _OPEN:
            return
        now = clock()
        with _LOCK:
            _OPEN.remove(self)
        took = now - self.start
        if self._plan is not None and ok:
            self._plan.finish(self.name, took)
        end = f"done in {fmt_seconds(took)}" if ok else f"stopped after {fmt_seconds(took)}"
        if self._tty:
            if ok and self.total:
                self.n = max(self.n, self.total)
            overall = self._plan.eta(now) if ok and self._plan is not None else None
            tail = f", overall ETA {fmt_seconds(overall)}" if overall and overall >= .5 else ""
            _draw(self._stream, self._terminal_parts(now, end + tail), final=True)
        else:
            counts = f" ({self.n} {_plural(self.unit)})" if self.n and not self.status else ""
            overall = self._plan.eta(now) if ok and self._plan is not None else None
            tail = f", overall ETA {fmt_seconds(overall)}" if overall and overall >= .5 else ""
            _write(self._stream, f"compress: {self.name}: {end}{counts}{tail}\n")


@contextlib.contextmanager
def phase(name: str, total: int | None = None, unit: str = "step", detail: str = "",
          steps: bool = True, fixed: bool = False):
    """One phase of the command, displayed while the block runs.

    Example:

    >>> with phase("calibration", total=256, unit="sample") as p:  # doctest: +SKIP
    ...     for batch in batches:
    ...         p.advance(len(batch))

    Args:
        name: str. The phase (``loading``, ``saliency``, ``training``, ...): also its
            entry in the plan.
        total: int or None, default None. Steps in the phase, when known.
        unit: str, default ``"step"``. What a step is (``batch``, ``layer``, ...).
        detail: str, default ``""``. What is being done (a file, a method).
        steps: bool, default True. Whether :func:`update` from code that does not know the
            phase (saliency loops) moves it.
        fixed: bool, default False. Its time is overhead, not a measure of the rate of
            the plan's work (loading, start-up).
    """
    p = Phase(name, total, unit, detail, steps, fixed, stream=_stream(), on=_ON.get())
    p.open()
    try:
        yield p
    except BaseException:
        p.close(ok=False)
        raise
    p.close()


def update(n: int, total: int | None = None, unit: str | None = None) -> None:
    """``n`` of ``total`` steps of the innermost open phase are done, from code that does
    not hold the phase (a saliency loop over layers or batches); cheap, and nothing when
    no phase takes steps."""
    if _OPEN and _OPEN[-1].steps:
        _OPEN[-1].update(n, total, unit)


def counted(iterable, total: int | None = None, unit: str = "sample"):
    """``iterable``, advancing the innermost open phase at each item (a converter's
    calibration generator)."""
    for i, item in enumerate(iterable, 1):
        yield item
        update(i, total, unit)


_TICKER = []


def _ticker() -> None:
    """A thread that keeps the terminal line's clock moving during long single calls
    (loading, an export, a converter): it redraws the innermost phase once a second."""
    if _TICKER and _TICKER[0].is_alive():
        return

    def run():
        while _OPEN:
            time.sleep(0.5)
            with _LOCK, contextlib.suppress(Exception):  # a display must not break work
                current = _OPEN[-1] if _OPEN else None
                if current is not None and current._tty and time.monotonic() - \
                        getattr(current, "_tick", 0.0) >= 1.0 and current.due():
                    current._tick = time.monotonic()
                    current.refresh()

    thread = threading.Thread(target=run, name="compress-progress", daemon=True)
    _TICKER[:] = [thread]
    thread.start()


def epoch_callback(callbacks=(), what: str = "training"):
    """A Keras callback showing a fit as one phase: per epoch its loss and validation
    numbers, the current sparsity of a pruning schedule among ``callbacks`` (one with
    ``target_sparsity`` and ``current``), the time per epoch, the fit's ETA and the
    overall ETA; in a terminal also the step and loss within the epoch.
    ``training.fit_model`` adds it when progress is on and Keras's own bar is off, and
    closes it with :func:`closing` if the fit fails.
    """
    import keras

    schedule = next((c for c in callbacks
                     if hasattr(c, "target_sparsity") and hasattr(c, "current")), None)

    def sparsity() -> str:
        return f", sparsity {float(schedule.current):.1%}" if schedule is not None else ""

    class EpochProgress(keras.callbacks.Callback):
        phase = None

        def on_train_begin(self, logs=None):
            self._epochs = self.params.get("epochs") or 0
            self._steps = self.params.get("steps") or None
            self._first = None
            self.phase = Phase(what, self._epochs, "epoch", steps=False, stream=_stream(),
                               on=_ON.get()).open()
            self.phase.status = f"epoch 0/{self._epochs}"

        def on_epoch_begin(self, epoch, logs=None):
            if self._first is None:
                self._first = epoch  # a resumed fit starts later; its ETA counts from here
                self.phase.position = epoch / max(self._epochs, 1)
                self.phase.restart_timing()
            self._epoch, self._te = epoch, clock()

        def on_epoch_end(self, epoch, logs=None):
            took = clock() - self._te
            parts = [f"epoch {epoch + 1}/{self._epochs}"]
            for key, value in (logs or {}).items():
                if isinstance(value, (int, float)) and key != "learning_rate":
                    parts.append(f"{key} {value:.4g}")
            self.phase.status = ", ".join(parts) + sparsity() + \
                f", {fmt_seconds(took)}/epoch"
            self.phase.n = epoch + 1
            self.phase.position = (epoch + 1) / max(self._epochs, 1)
            self.phase.refresh(line=True)

        def on_train_end(self, logs=None):
            if self.phase is not None:
                self.phase.close()

    class StepProgress(EpochProgress):
        """In a terminal: the step and loss within the epoch, redrawn when due."""

        def on_train_batch_end(self, batch, logs=None):
            if not self.phase.due():
                return
            loss = (logs or {}).get("loss")
            self.phase.status = (f"epoch {self._epoch + 1}/{self._epochs}, step {batch + 1}"
                                 + (f"/{self._steps}" if self._steps else "")
                                 + (f", loss {float(loss):.4g}" if loss is not None else "")
                                 + sparsity())
            if self._steps:
                self.phase.position = (self._epoch + (batch + 1) / self._steps) / \
                    max(self._epochs, 1)
            self.phase.refresh()

    return StepProgress() if _ON.get() and isatty(_stream()) else EpochProgress()


@contextlib.contextmanager
def closing(callback):
    """Close the phase of an :func:`epoch_callback` if the fit stops with an error (Keras
    skips ``on_train_end`` then); None is allowed."""
    try:
        yield
    except BaseException:
        if callback is not None and callback.phase is not None:
            callback.phase.close(ok=False)
        raise
