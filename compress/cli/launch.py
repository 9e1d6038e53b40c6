"""``compress launch --workers N COMMAND ...``: a training command on N local workers.

Each worker is a process running ``compress COMMAND ... --strategy multiworker`` with a
``TF_CONFIG`` naming all of them on 127.0.0.1 (free ports, worker 0 the chief), as a
cluster launcher would set it. The chief's output and report come through; the other
workers print nothing and write nothing. A worker that dies fails the whole command in
one line naming it, and the others are stopped.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import click

from compress.errors import CompressError

# Seconds the other workers get to stop after SIGTERM before SIGKILL (one blocked in a
# collective operation never returns to Python to run its handler).
_GRACE = 5.0
# Seconds the other workers may take to finish once the chief has.
_FINISH = 60.0


@click.command("launch", context_settings={"ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
@click.option("--workers", type=int, default=2, show_default=True,
              help="Local worker processes (worker 0 is the chief).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND [ARGS]...")
def command(workers, args):
    """Run a training COMMAND (prune, share, quantize, distill, cascade, run) on
    N local workers with tf.distribute.MultiWorkerMirroredStrategy: the same results as
    one process for the same seed and batch size, the batches split over the workers.
    The chief (worker 0) writes the output and prints the report; the exit code is the
    chief's. If a worker dies, every worker is stopped and the command fails with one line
    naming it; with --checkpoint-dir, running it again resumes at the last finished epoch.

    \b
    Examples:
      compress launch --workers 2 prune m.keras -o p.keras --data digits --epochs 4
      compress launch --workers 2 run recipes/han2015-lenet300.yaml -o out/han
    """
    argv = worker_argv(workers, args)
    from compress import cluster

    ports = cluster.free_ports(workers)
    _run_workers(argv, ports)


def worker_argv(workers: int, args) -> list[str]:
    """The command line every worker runs, checked before anything starts: ``--strategy
    multiworker`` added if missing; refused for fewer than 1 worker, another strategy, or a
    command that does not train."""
    from compress import passes

    if workers < 1:
        raise CompressError(f"--workers {workers}: must be at least 1")
    args = list(args)
    # compress.cli's training_command_names(), read from the registry here: compress.cli
    # imports this module (as_worker), so importing it back would be a cycle.
    trains = [p.name for p in passes.all_passes() if p.cli and p.trains] + ["run"]
    if not args:
        raise CompressError("launch needs a command to run, e.g. 'compress launch --workers 2 "
                            "prune MODEL -o OUT --data digits'")
    if args[0] not in trains:
        raise CompressError(f"launch runs training commands ({', '.join(trains)}), not "
                            f"'{args[0]}'")
    strategy = None
    for i, arg in enumerate(args):
        if arg == "--strategy" and i + 1 < len(args):
            strategy = args[i + 1]
        elif arg.startswith("--strategy="):
            strategy = arg.split("=", 1)[1]
    if strategy is None:
        args += ["--strategy", "multiworker"]
    elif strategy != "multiworker":
        raise CompressError(f"launch runs --strategy multiworker, not --strategy {strategy}")
    return args


def _run_workers(argv: list[str], ports: list[int]) -> None:
    """Start the workers; forward the chief's stdout and stderr; watch them all."""
    # The other workers' scratch folders (their outputs, which nobody reads) go under one
    # folder of ours, removed once every worker has ended, even one killed before its cleanup.
    with tempfile.TemporaryDirectory(prefix="compress-launch-") as scratch:
        _run_in(argv, ports, scratch)


def _run_in(argv: list[str], ports: list[int], scratch: str) -> None:
    from compress import cluster

    procs, tails, forwarding = [], [], threading.Event()
    forwarding.set()
    for index in range(len(ports)):
        env = dict(os.environ, TF_CONFIG=cluster.local_tf_config(ports, index),
                   COMPRESS_LAUNCHED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        chief = index == 0
        if not chief:
            env["TMPDIR"] = scratch
        proc = subprocess.Popen(  # this interpreter, the user's own command
            [sys.executable, "-m", "compress.cli", *argv], env=env, text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if chief else subprocess.DEVNULL,
            stderr=subprocess.PIPE, errors="replace", bufsize=1,
            start_new_session=True)  # a terminal's Ctrl-C reaches them through us
        tail = collections.deque(maxlen=20)
        if chief:
            _pump(proc.stdout, sys.stdout, forwarding, None)
            _pump(proc.stderr, sys.stderr, forwarding, tail)
        else:
            _pump(proc.stderr, None, forwarding, tail)
        procs.append(proc)
        tails.append(tail)
    try:
        failed = _watch(procs)
    except KeyboardInterrupt:
        _stop(procs, signal.SIGINT)
        raise
    if failed is None:  # every worker finished: the chief's exit code
        _drain(procs[0])
        code = procs[0].returncode
        if code:
            click.get_current_context().exit(code)
        return
    forwarding.clear()  # the chief's reaction to being stopped is not the news
    _stop(procs, signal.SIGTERM)
    index, code = failed
    raise CompressError(_death(index, code, tails[index]))


def _watch(procs):
    """Wait until every worker exits (None) or one fails: ``(index, exit code)``. A chief
    that fails is returned as None (it printed its own error), after the others stop."""
    chief_done = None
    while True:
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is None or code == 0:
                continue
            if i == 0:
                _stop(procs[1:], signal.SIGTERM)
                return None
            if procs[0].returncode == 0:  # after the chief wrote everything: work is done
                click.echo(f"warning: {_death(i, code, ())} after the chief finished",
                           err=True)
                _stop(procs[1:], signal.SIGTERM)
                return None
            return i, code
        if all(p.returncode == 0 for p in procs):
            return None
        if procs[0].returncode == 0:
            chief_done = chief_done or time.monotonic()
            if time.monotonic() - chief_done > _FINISH:
                _stop(procs[1:], signal.SIGTERM)
                return None
        time.sleep(0.1)


def _death(index: int, code: int, tail) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"worker {index} exited with signal {-code} ({name})"
    last = next((line for line in reversed(tail) if line.startswith("error:")), None)
    said = f": {last.removeprefix('error:').strip()}" if last else ""
    return f"worker {index} exited with code {code}{said}"


def _stop(procs, signum) -> None:
    """Send ``signum`` to every running worker; SIGKILL those still running after a grace."""
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signum)
    deadline = time.monotonic() + _GRACE
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()


def _signal(proc, signum) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _pump(stream, target, forwarding, tail) -> None:
    """Copy ``stream`` line by line to ``target`` (while ``forwarding`` is set), keeping
    the last lines in ``tail``."""

    def run():
        for line in stream:
            if tail is not None:
                tail.append(line.rstrip("\n"))
            if target is not None and forwarding.is_set():
                target.write(line)
                target.flush()
        stream.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _PUMPS.setdefault(id(stream), thread)


_PUMPS: dict = {}


def _drain(proc) -> None:
    """Wait for the chief's last lines to be forwarded."""
    for stream in (proc.stdout, proc.stderr):
        thread = _PUMPS.pop(id(stream), None) if stream is not None else None
        if thread is not None:
            thread.join(timeout=10)


def as_worker(stack, kwargs: dict, keep_last_good):
    """Set a training command up as one worker of a ``--strategy multiworker`` run.

    ``TF_CONFIG`` is checked first (one line for each fault, before TensorFlow loads). The
    chief runs the command as given. Every other worker runs the same computation (the
    workers meet in collective operations, so each must do what the chief does) but
    writes its output and ``--keep-last-good`` file into a temporary folder removed at
    the end, and prints nothing on stdout.

    Returns:
        ``(kwargs, keep_last_good)`` as this worker uses them.
    """
    from compress import cluster

    info = cluster.read_tf_config()
    cluster.check_own_port(info)
    if info.is_chief:
        return kwargs, keep_last_good
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="compress-worker-"))
    kwargs = dict(kwargs)
    output = kwargs.get("output")
    if "output" in kwargs:
        kwargs["output"] = os.path.join(scratch, os.path.basename(
            os.path.normpath(output)) if output else "out")
    if keep_last_good is not None:
        keep_last_good = os.path.join(scratch, "last-good-" + os.path.basename(keep_last_good))
    devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 - closed by stack
    from contextlib import redirect_stdout

    stack.enter_context(redirect_stdout(devnull))
    return kwargs, keep_last_good
