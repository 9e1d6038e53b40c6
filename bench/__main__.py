"""``python -m bench [--quick] [--only NAME ...] [--out FILE] [--jobs N]``: run cases,
write Markdown.

A full run (no ``--jobs``) runs every case in ``bench/cases/*.py`` with a speed target in
this one process, one after the other (Keras state is cleared between cases), on the same
machine, with the same seed, so that the speed ratios each case measures are not disturbed
by another case; the cases without one (``UNTIMED``) run first, two at a time in child
processes. ``--jobs 1`` runs everything here, one after the other. With ``--jobs N`` (the
default of ``--quick``, N = 2) every case runs in one of N child processes, which take the
cases one by one from a shared queue. Children send their sections and shared facts back
as JSON; the cases that summarise others (the published-results table) run last in this
process. A case that fails is reported in the output with its error and the run exits
non-zero after finishing the others. A case marked ``separate = True`` (the model zoo,
30-45 minutes) is a part of its own: a full run leaves it out; ``--only NAME`` (``make
bench-zoo``) runs it, and quick runs include it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import Context, Section, Target, table

ROOT = Path(__file__).resolve().parent.parent

# Cases with no speed target: a full run runs them two at a time in child processes (their
# accuracies and sizes do not depend on a neighbour), and the others alone. They start in
# this order: the dense baselines first (the cases after it find them trained), then the
# longest first, so that no long case starts last and runs alone at the end.
UNTIMED = ("baselines", "distillation", "sharing-hash", "pruning", "quantization-qat-pruned",
           "export-parity", "sharing-kmeans", "tasks-regression", "structured-obs",
           "pruning-obs-layers", "onnx-float16", "sequences", "sharing-hash-layers",
           "transfer", "preprocessing", "decoder-lm")
# Quick mode runs every case in parallel, longest first (case times of the last quick run).
# Quick baselines take seconds; a case that needs one before it exists trains its own.
QUICK_ORDER = ("tfmot-head-to-head", "quantization-qat-pruned", "multiworker", "zoo",
               "data-sources-memory", "quantization-mobilenetv2-per-tensor",
               "pruning-obs-mobilenetv2", "deployment", "pruning", "distillation", "scaling",
               "quantization", "sharing-hash", "tasks-regression", "callbacks-schedules",
               "pruning-costs", "pruning-obs", "pruning-obs-layers", "sequences",
               "sharing-hash-layers", "transfer", "callbacks-cascade",
               "structured-obs", "export-parity", "onnx-float16", "data-sources-throughput",
               "label-free", "sharing-kmeans", "reliability-refusals", "preprocessing", "decoder-lm",
               "baselines", "registry")


def discover() -> dict:
    import bench.cases

    cases = {}
    for info in sorted(pkgutil.iter_modules(bench.cases.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"bench.cases.{info.name}")
        cases.update(getattr(module, "CASES", {}))
    return cases


def machine() -> list[list]:
    import importlib.metadata as md

    rows = [["python", platform.python_version()], ["platform", platform.platform()],
            ["cpu cores", os.cpu_count()]]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        rows.append(["memory", f"{pages / 2**30:.1f} GiB"])
    except (ValueError, OSError):
        pass
    for dist in ("tensorflow", "keras", "onnxruntime", "ai-edge-litert", "tf2onnx", "onnx",
                 "numpy", "keras-compress"):
        try:
            rows.append([dist, md.version(dist)])
        except md.PackageNotFoundError:
            rows.append([dist, "not installed"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the harness")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--out", default=None,
                        help="Markdown output (default BENCHMARKS.md, or "
                             "bench/out/BENCHMARKS.quick.md with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None,
                        help="cases run at once in child processes (default 1; 2 with "
                             "--quick). Keep 1 for numbers: parallel cases share the cores")
    parser.add_argument("--list", action="store_true", help="list case names and exit")
    parser.add_argument("--work-dir", default=None,
                        help="scratch files (default bench/out/work)")
    parser.add_argument("--queue", default=None, help=argparse.SUPPRESS)  # worker: case list
    parser.add_argument("--plot-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cases = discover()
    if args.list:
        print("\n".join(cases))
        return 0
    names = args.only or list(cases)
    if not args.only and not args.quick:  # parts of their own (make bench-zoo) stay out
        names = [n for n in names if not getattr(cases[n], "separate", False)]
    unknown = [n for n in names if n not in cases]
    if unknown:
        print(f"error: unknown case(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    # Cases that summarise others (the published-results table) run last.
    names = sorted(names, key=lambda n: bool(getattr(cases[n], "runs_last", False)))
    out = Path(args.out) if args.out else (
        ROOT / "bench" / "out" / "BENCHMARKS.quick.md" if args.quick else ROOT / "BENCHMARKS.md")
    plot_dir = Path(args.plot_dir) if args.plot_dir else (
        (out.parent / "plots") if args.quick or args.out else ROOT / "bench" / "plots")
    work = Path(args.work_dir) if args.work_dir else ROOT / "bench" / "out" / "work"
    for d in (out.parent, plot_dir, work):
        d.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, seed=args.seed, plot_dir=plot_dir, work_dir=work,
                  out_dir=out.parent)
    jobs = args.jobs or (2 if args.quick else 1)
    if args.queue is None:
        # Baselines are trained once per run: never reuse a file from an earlier run.
        for old in work.glob("baseline-*.keras"):
            old.unlink()

    started = time.perf_counter()
    if args.queue is not None:
        return work_queue(Path(args.queue), cases, ctx)
    last = [n for n in names if getattr(cases[n], "runs_last", False)]
    if jobs > 1:
        parallel = [n for n in names if n not in last]
        note = (f" Cases ran {jobs} at a time in child processes (`--jobs {jobs}`), sharing "
                "the cores: case wall times and speed ratios are disturbed by the neighbour.")
    else:  # alone, but the untimed cases two at a time
        parallel = [n for n in names if n in UNTIMED] if args.jobs is None else []
        jobs = 2
        note = (" Cases with a speed target ran alone, one after the other; the cases that "
                f"measure no speed ({', '.join(parallel)}) ran two at a time in child "
                "processes." if len(parallel) > 1 else "")
    done = {}
    if len(parallel) > 1:
        done = dict(zip(parallel, run_children(parallel, args, jobs, ctx, out, plot_dir)))
        if not args.quick:
            for section in done.values():
                section.add("_This case has no speed target: it ran beside another one "
                            f"({', '.join(parallel)} two at a time), so the times it shows "
                            "share the cores._")
    for name in names:  # sections in the usual order; the summaries see the others
        if name not in done:
            done[name] = run_case(name=name, case=cases[name], ctx=ctx)
        ctx.sections.append(done[name])
    sections = [done[n] for n in names]
    total = time.perf_counter() - started
    out.write_text(render(sections, ctx, total, plot_dir, out, note))
    print(f"[bench] wrote {out} ({total:.0f} s)", file=sys.stderr)
    return 1 if any(s.error for s in sections) else 0


def run_case(name: str, case, ctx: Context) -> Section:
    """Run one case in this process: fresh Keras state and seed, errors reported."""
    from compress.quiet import import_tensorflow

    import_tensorflow()
    import keras

    from compress.training import set_seed

    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    keras.backend.clear_session()
    set_seed(ctx.seed)
    t0 = time.perf_counter()
    try:
        section = case(ctx)
    except Exception as exc:  # noqa: BLE001 - report it and go on with the other cases
        traceback.print_exc()
        section = Section(title=name, error=" ".join(f"{type(exc).__name__}: {exc}".split())[:400])
    section.seconds = time.perf_counter() - t0
    print(f"[bench] {name} done in {section.seconds:.1f} s", file=sys.stderr, flush=True)
    return section


def run_children(names: list, args, jobs: int, ctx: Context, out: Path, plot_dir: Path):
    """Run the cases in ``jobs`` child processes that take them one by one from a shared
    queue (a child imports TensorFlow once, not once per case); sections in the order of
    ``names``, shared facts merged into ``ctx.facts``."""
    first = QUICK_ORDER if args.quick else UNTIMED
    order = sorted(names, key=lambda n: first.index(n) if n in first else len(first))
    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        queue = Path(tmp) / "queue"
        queue.write_text("\n".join(order))
        cmd = [sys.executable, "-m", "bench", "--queue", str(queue), "--seed", str(args.seed),
               "--out", str(out), "--plot-dir", str(plot_dir), "--work-dir", str(ctx.work_dir)]
        if args.quick:
            cmd.append("--quick")
        children = [subprocess.Popen(cmd, cwd=ROOT) for _ in range(min(jobs, len(order)))]
        codes = [child.wait() for child in children]
        for name in names:
            result = Path(tmp) / f"{name}.json"
            if not result.exists():
                results[name] = Section(title=name, error=(
                    f"no result: the child processes exited with {codes} after "
                    f"{time.perf_counter() - t0:.0f} s"))
                continue
            data = json.loads(result.read_text())
            sec = data["section"]
            sec["targets"] = [Target(**t) for t in sec["targets"]]
            results[name] = Section(**sec)
            ctx.facts.update(data["facts"])
    return [results[n] for n in names]


def work_queue(queue: Path, cases: dict, ctx: Context) -> int:
    """A child process: run cases taken from ``queue`` until it is empty, each result (its
    section and the facts so far) written as ``NAME.json`` beside the queue."""
    while (name := _take(queue)) is not None:
        section = run_case(name=name, case=cases[name], ctx=ctx)
        (queue.parent / f"{name}.json").write_text(json.dumps(
            {"section": dataclasses.asdict(section), "facts": ctx.facts}))
    return 0


def _take(queue: Path) -> str | None:
    """The next case name from the queue file (locked while read and rewritten), or None."""
    import fcntl

    with open(queue, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        names = f.read().split()
        if not names:
            return None
        f.seek(0)
        f.truncate()
        f.write("\n".join(names[1:]))
        return names[0]


def render(sections, ctx, total, plot_dir, out, note: str = "") -> str:
    targets = [t for s in sections for t in s.targets]
    met = sum(t.met for t in targets)
    head = [
        "# Benchmarks" + (" (quick mode: small sizes, numbers not meaningful)" if ctx.quick else ""),
        "",
        (f"Generated by `{'make bench-quick' if ctx.quick else 'make bench'}` on "
         f"{datetime.date.today().isoformat()} in {total / 60:.1f} minutes, seed {ctx.seed}. "
         "Every number below was measured in this one run on this machine; speed is given as "
         "ratios between artifacts measured back to back." + note),
        "",
        table(["machine", ""], machine()),
        "",
        f"## Targets: {met} of {len(targets)} met",
        "",
        table(["issue", "target", "measured", "limit", "met"],
              [[t.issue, t.description, t.measured, t.limit, "yes" if t.met else "**no**"]
               for t in targets]) if targets else "_no targets checked_",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(s.markdown() for s in sections)


if __name__ == "__main__":
    sys.exit(main())
