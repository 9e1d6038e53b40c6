"""Reliability (#17): refusals that need no TensorFlow answer in under a second."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Section, table

# (what is wrong, the command's arguments, the exit code it must give). Every one is a
# mistake the CLI can see without TensorFlow: the model file is never read.
REFUSALS = [
    ("missing input file", ["prune", "missing.keras", "-o", "out.keras", "--data", "digits"], 1),
    ("existing output without --force", ["prune", "model.keras", "-o", "existing.keras",
                                         "--data", "digits"], 1),
    ("bad option value", ["prune", "model.keras", "-o", "out.keras", "--sparsity", "1.5"], 1),
    ("bad recipe YAML", ["run", "bad.yaml", "-o", "recipe-out"], 1),
    ("unknown command option", ["prune", "model.keras", "-o", "out.keras", "--sparsty", "0.5"],
     2),
    ("output folder not writable", ["prune", "model.keras", "-o", "{unwritable}/out.keras"], 1),
]
# Refusals TensorFlow is not needed for, that the CLI makes only after importing it today.
LATE_REFUSALS = [
    ("input .keras not a zip archive", ["prune", "model.keras", "-o", "out.keras"], 1),
]


def _unwritable_folder(work: Path) -> str:
    """A folder this user cannot create files in: a mode-555 folder, or for root (whom
    modes do not stop) sysfs, where nobody can create a file."""
    if os.geteuid() != 0:
        folder = work / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return str(folder)
    return "/sys"


# Runs the entry-point script as its own ``__main__`` and, at exit, writes which modules
# were loaded to a side file: the CLI silences stderr while it imports TensorFlow, so
# ``python -X importtime`` (which reports on stderr) would miss exactly that import.
_PROBE = """
import atexit, os, runpy, sys

def report():
    with open(os.environ["COMPRESS_BENCH_PROBE"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))

atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _imports_tensorflow(cmd, cwd) -> tuple[bool, int]:
    """Run ``cmd`` (the entry point) once more, recording ``sys.modules`` at exit: True when
    any ``tensorflow`` or ``keras`` module was loaded, and the number of modules loaded."""
    probe = Path(cwd).parent / "refusal-modules.txt"
    subprocess.run([sys.executable, "-c", _PROBE, *cmd], cwd=cwd, capture_output=True,
                   text=True, timeout=120, check=False,
                   env=dict(os.environ, COMPRESS_BENCH_PROBE=str(probe)))
    modules = probe.read_text().split()
    probe.unlink()
    heavy = [m for m in modules if m.split(".")[0] in ("tensorflow", "keras")]
    return bool(heavy), len(modules)


def case_refusals(ctx) -> Section:
    """Time typical refusals through the installed ``compress`` entry point."""
    sec = Section("Reliability: refusals that need no TensorFlow", issue="#17")
    entry = Path(sys.executable).with_name("compress")
    if not entry.exists():
        raise RuntimeError(f"no installed entry point at {entry} (pip install -e .)")
    work = ctx.work_dir / "refusals"
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.keras").write_bytes(b"never read: every case is refused before the model")
    (work / "existing.keras").write_bytes(b"x")
    (work / "bad.yaml").write_text("model: lenet300\ndata: digits\nsteps: [prune: {sparsity: 0.5}\n")
    unwritable = _unwritable_folder(work)
    runs = ctx.size(2, 7)
    rows, every, worst, clean, late = [], [], [], True, []
    # --quick checks the harness: the late refusals import TensorFlow (seconds each)
    for what, argv, code in REFUSALS + ctx.size([], LATE_REFUSALS):
        cmd = [str(entry), *(a.format(unwritable=unwritable) for a in argv)]
        times, last = [], None
        for _ in range(runs):
            t0 = time.perf_counter()
            last = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120,
                                  check=False)
            times.append(time.perf_counter() - t0)
        lines = [line for line in last.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        heavy, modules = _imports_tensorflow(cmd, work)
        if (what, argv, code) in LATE_REFUSALS:
            late.append(max(times))
        else:
            clean = clean and last.returncode == code and "Traceback" not in last.stderr \
                and not heavy
            every += times
            worst.append(max(times))
        rows.append([what, f"`compress {' '.join(cmd[1:])}`", str(last.returncode),
                     f"{statistics.median(times):.3f}", f"{max(times):.3f}",
                     "no" if not heavy else "**yes**", str(modules),
                     message.replace("|", "\\|")[:90]])
    left = sorted(p.name for p in work.iterdir()) != ["bad.yaml", "existing.keras", "model.keras"] \
        + (["read-only"] if unwritable.endswith("read-only") else [])
    sec.add(f"Each refusal run {runs} times in a fresh process through the installed entry "
            f"point `{entry.name}` (Python start-up included), wall time in seconds (the "
            "last row: a refusal that needs no TensorFlow but is made after importing it); "
            "then once "
            "more with `sys.modules` written to a side file at exit (TensorFlow or Keras "
            "count as imported if any of their modules was loaded). The unwritable folder "
            f"is {unwritable}" + (" (run as root, which a mode-555 folder does not stop)"
                                  if unwritable == "/sys" else "") + ".\n\n"
            + table(["refusal", "command", "exit", "median s", "max s", "TF imported",
                     "modules loaded", "message"], rows))
    sec.target("refusals that need no TensorFlow: max wall time < 1 s",
               f"max {max(worst):.3f} s, median {statistics.median(every):.3f} s "
               f"({len(REFUSALS)} refusals x {runs} runs)", "1 s", max(worst) < 1.0)
    sec.target("refusals import no TensorFlow/Keras, exit 1 (2 for usage), no traceback, "
               "write nothing", f"{sum(r[5] == 'no' for r in rows[:len(REFUSALS)])} of "
               f"{len(REFUSALS)} without TensorFlow; {'all' if clean else 'not all'} clean; "
               f"{'files left' if left else 'nothing written'}", "all",
               clean and not left)
    if late:
        sec.target("a corrupt input model (not a zip archive) refused in < 1 s",
                   f"max {max(late):.3f} s", "1 s", max(late) < 1.0)
    return sec


CASES = {"reliability-refusals": case_refusals}
