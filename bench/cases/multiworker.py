"""Multi-worker training (#21): the same recipe (LeNet-300-100 trained, pruned gradually to
90%, distilled into a half-width student) on one process and on 2 local workers under
``compress launch`` (tf.distribute.MultiWorkerMirroredStrategy over 127.0.0.1): the
results must be equivalent; the time ratio is reported (on a 2-core machine two workers
share the cores of one, so it is not expected to be faster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from bench.harness import Section, table

_RECIPE = """name: multiworker-bench
seed: {seed}
data: mnist5k
model: lenet300
{subset}baseline: {{epochs: {epochs}, learning_rate: 0.001}}
steps:
  - prune: {{sparsity: 0.9, schedule: gradual, epochs: {epochs}, scope: global}}
{distill}"""


def _run(argv, env) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[2:5]))} failed: {proc.stderr[-600:]}")
    return time.perf_counter() - started


def _report(folder) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {s["kind"]: s["after"]["accuracy"] for s in report["steps"]}


def _kernels(path):
    import keras

    model = keras.models.load_model(path)
    return [np.asarray(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")]


def case_multiworker(ctx) -> Section:
    sec = Section("Multi-worker training: 2 local workers vs 1 process", issue="#21")
    epochs = ctx.size(1, 4)
    recipe = ctx.work_dir / "multiworker.yaml"
    # quick: 640 training samples (the run checks the code; process start-up dominates)
    # quick: no distillation step either (tests/test_multiworker.py covers it)
    distill = "" if ctx.quick else \
        f"  - distill: {{width: 0.5, epochs: {epochs}, baseline: false}}\n"
    recipe.write_text(_RECIPE.format(seed=ctx.seed, epochs=epochs, distill=distill,
                                     subset="subset: 640\n" if ctx.quick else ""))
    steps = ("prune",) if ctx.quick else ("prune", "distill")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    cli = [sys.executable, "-m", "compress.cli"]
    out1, out2 = ctx.work_dir / "mw-one", ctx.work_dir / "mw-two"
    seconds = {
        "1 process": _run(cli + ["run", str(recipe), "-o", str(out1), "--force", "--json"],
                          env),
        "2 workers": _run(cli + ["launch", "--workers", "2", "run", str(recipe), "-o",
                                 str(out2), "--force", "--json"], env)}
    acc1, acc2 = _report(out1), _report(out2)
    masks_equal = all(np.array_equal(a == 0, b == 0) for a, b in zip(
        _kernels(out1 / "step1-prune.keras"), _kernels(out2 / "step1-prune.keras"),
        strict=True))
    zeros = [float((k == 0).mean()) for k in _kernels(out2 / "step1-prune.keras")]
    rows = [[step, f"{acc1[step]:.4f}", f"{acc2[step]:.4f}",
             f"{100 * abs(acc2[step] - acc1[step]):.2f}"] for step in steps]
    sec.add(f"LeNet-300-100 on mnist5k, {epochs} epoch(s) per stage, global batch 64, "
            f"seed {ctx.seed}; 2 workers = `compress launch --workers 2 run` on 127.0.0.1, "
            "ring all-reduce on CPU.\n\n"
            + table(["step", "1 process acc.", "2 workers acc.", "diff (pts)"], rows)
            + f"\n\nPruned masks identical: {masks_equal} (layer sparsity "
            + ", ".join(f"{z:.1%}" for z in zeros) + ").\n\n"
            + table(["run", "wall seconds (incl. TensorFlow start)"],
                    [[k, f"{v:.1f}"] for k, v in seconds.items()])
            + "\n\nOn this 2-core machine the two workers share the cores one process "
            "uses, and every step adds an all-reduce over gRPC: the ratio measures the "
            "overhead, not a speed-up (that needs one machine, or one GPU, per worker).")
    for step in steps:
        diff = 100 * abs(acc2[step] - acc1[step])
        sec.target(f"2 workers vs 1 process, {step}: accuracy difference <= 0.5 pts",
                   f"{diff:.2f} pts", "0.5 pts", diff <= 0.5)
    sec.target("2 workers vs 1 process: identical pruning masks", str(masks_equal), "True",
               masks_equal)
    ratio = seconds["2 workers"] / seconds["1 process"]
    sec.target("time of 2 local workers / 1 process (reported; 2 cores, not a speed-up)",
               f"{ratio:.2f}x", "reported", True)
    return sec


CASES = {"multiworker": case_multiworker}
