"""Multi-worker training (#21): the same recipe (LeNet-300-100 trained, pruned gradually to
90%, distilled into a half-width student; in the full form also k-means sharing, hashed
layers and QAT from the trained model) on one process, on ``mirrored`` over 2 logical CPU
devices and on 2 local workers under ``compress launch`` (MultiWorkerMirroredStrategy over
127.0.0.1): the results must be equivalent; the time ratio is reported (on a 2-core machine
two workers share the cores of one, so it is not expected to be faster).

Two workers do the arithmetic of two replicas: each takes half of every global batch and
the halves' gradients are summed. That sum is not rounded like one process's gradient of
the whole batch, so the weights drift apart during training and the global magnitude
threshold can pick other weights that sit near it. ``mirrored`` on 2 devices does the same
two-replica arithmetic in one process, so 2 workers must equal it exactly: that is the
check of the distributed code (the same data split, threshold, schedule and masks on every
worker). The 1-process and mirrored runs here record every mask update (weights, masks),
to measure where the masks that differ from one process's lie against the threshold.
"""

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
{more}"""

# The full form: the other training passes #21 names, each from the trained model.
_MORE = """  - distill: {{width: 0.5, epochs: {epochs}, baseline: false}}
  - share: {{method: kmeans, clusters: 16, epochs: {epochs}, from: baseline}}
  - share: {{method: hash, factor: 0.125, epochs: {epochs}, from: baseline}}
  - quantize: {{mode: int8, format: tflite, qat: true, epochs: {epochs}, from: baseline}}
"""

# One process, 2 logical CPU devices (set before TensorFlow starts): the recipe with no
# strategy, then mirrored; every mask update of the gradual pruning is recorded.
_SCRIPT = r"""
import json, sys, time
started = time.perf_counter()
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from compress.callbacks import pruning
from compress.cli import main
from compress.pruning.masks import get_mask
recipe, work, *strategies = sys.argv[1:]
log = []
update = pruning.Pruning._update_masks
def recorded(self, target):
    weights = [np.asarray(v).copy() for _, v in self._pairs]
    before = [np.asarray(get_mask(v)).copy() for _, v in self._pairs]
    update(self, target)
    log.append((target, weights, before, [np.asarray(get_mask(v)).copy() for _, v in self._pairs]))
pruning.Pruning._update_masks = recorded
for strategy in strategies:
    log.clear()
    main(["run", recipe, "-o", f"{work}/mw-{strategy}", "--force", "--json", "--strategy",
          strategy], standalone_mode=False)
    arrays = {"targets": np.array([t for t, *_ in log])}
    for i, (_, weights, before, after) in enumerate(log):
        for j, (w, b, a) in enumerate(zip(weights, before, after)):
            arrays.update({f"{i}.w{j}": w, f"{i}.before{j}": b, f"{i}.after{j}": a})
    np.savez(f"{work}/mw-updates-{strategy}.npz", **arrays)
    if strategy == "none":  # the time of a 1-process run, TensorFlow's start included
        with open(f"{work}/mw-seconds.json", "w") as f:
            json.dump(time.perf_counter() - started, f)
"""


def _run(argv, env) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[2:5]))} failed: {proc.stderr[-600:]}")
    return time.perf_counter() - started


def _label(step) -> str:
    options = step["options"]
    if step["kind"] == "share":
        return f"share ({options['method']})"
    if step["kind"] == "quantize" and options.get("qat"):
        return "quantize (QAT int8, LiteRT)"
    return step["kind"]


def _report(folder) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {_label(s): s["after"]["accuracy"] for s in report["steps"]}


def _weights(path):
    import keras

    from compress.layers import register_layers

    register_layers()  # HashedDense

    model = keras.models.load_model(path)
    kernels = [np.asarray(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")]
    return kernels, [np.asarray(w) for w in model.get_weights()]


def threshold_distances(one: dict, other: dict) -> dict:
    """Where the mask entries that differ between two recorded runs lie.

    ``one`` and ``other`` hold each mask update of a global-scope magnitude schedule
    (``targets``; ``{i}.w{j}``, ``{i}.before{j}``, ``{i}.after{j}``: layer ``j``'s weights
    and masks at update ``i``). For the entries whose masks first differ at an update,
    the distance of ``|w|`` in ``one`` from ``one``'s threshold there (the mean of the
    last pruned and first kept scores), relative to the threshold; and how far the two
    runs' weights had drifted apart by then (largest and median ``|w_one - w_other|``).
    """
    layers = sum(1 for k in one if k.startswith("0.w"))
    worst, drift, median, flips = 0.0, 0.0, 0.0, 0
    for i in range(len(one["targets"])):
        def flat(run, name, i=i):
            return np.concatenate([run[f"{i}.{name}{j}"].ravel() for j in range(layers)])
        w, w2 = flat(one, "w"), flat(other, "w")
        before, after, after2 = flat(one, "before"), flat(one, "after"), flat(other, "after")
        scores = np.sort(np.where(before > 0, np.abs(w), -np.inf))
        k = round(float(one["targets"][i]) * len(scores))
        threshold = float(scores[k - 1:k + 1].mean())
        new = (after != after2) & (before == flat(other, "before"))
        flips += int(new.sum())
        if new.any():
            worst = max(worst, float(np.max(np.abs(np.abs(w[new]) - threshold)) / threshold))
        if i == 0:
            drift = float(np.max(np.abs(w - w2)))
            median = float(np.median(np.abs(w - w2)))
    return {"max_distance": worst, "drift_max": drift, "drift_median": median,
            "flips": flips}


def _explained(same_as_mirrored, drift: float, where) -> str:
    """The paragraph on why the masks of 2 workers and 1 process differ (full form)."""
    text = (f" The trained models of 1 process and 2 workers differ by at most {drift:.1e} "
            "in a weight.")
    if where is None:  # quick: no mirrored run, no recorded mask updates
        return text
    return (
        f" 2 workers vs mirrored: the weights of every model written "
        f"{'bitwise identical' if same_as_mirrored else 'DIFFER'}.\n\n"
        "Why the masks differ from one process's: two replicas sum two half-batch "
        "gradients, rounded otherwise than one whole-batch gradient (measured apart, not in "
        "this run: about 1e-8 absolute on the first step, and a one-process model that sums "
        "two half-batch gradients equals mirrored bit for bit over 4 epochs, without "
        "tf.distribute); training carries the difference on, and by the end of the "
        f"trained model's epochs the largest weight differs by {drift:.1e}. At the first "
        f"mask update the weights differ by at most {where['drift_max']:.1e} (median "
        f"{where['drift_median']:.1e}); "
        + (f"the {where['flips']} mask entries that came out differently (1 process vs "
           "mirrored, which equals 2 workers) lay within "
           f"{where['max_distance']:.1%} of the global threshold. " if where["flips"] else
           "no mask entry came out differently (1 process vs mirrored). ")
        + f"The distributed code itself is {'exact' if same_as_mirrored else 'NOT exact'}: "
        "the workers' masks, schedule steps and weights "
        f"{'are' if same_as_mirrored else 'should be'} those of mirrored bit for bit.")


def case_multiworker(ctx) -> Section:
    sec = Section("Multi-worker training: 2 local workers vs 1 process", issue="#21")
    epochs = ctx.size(1, 4)
    recipe = ctx.work_dir / "multiworker.yaml"
    # quick: 640 training samples, the pruning step alone and no mirrored run (the run
    # checks the code; process start-up dominates); tests/test_multiworker.py covers
    # distillation, k-means, hashing, QAT and mirrored = 2 workers.
    recipe.write_text(_RECIPE.format(seed=ctx.seed, epochs=epochs,
                                     more="" if ctx.quick else _MORE.format(epochs=epochs),
                                     subset="subset: 640\n" if ctx.quick else ""))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    work = ctx.work_dir
    strategies = ("none",) if ctx.quick else ("none", "mirrored")
    _run([sys.executable, "-c", _SCRIPT, str(recipe), str(work), *strategies], env)
    seconds = {
        "1 process": json.loads((work / "mw-seconds.json").read_text()),
        "2 workers": _run([sys.executable, "-m", "compress.cli", "launch", "--workers", "2",
                           "run", str(recipe), "-o", str(work / "mw-two"), "--force",
                           "--json"], env)}
    runs = {"1 process": work / "mw-none", "mirrored": work / "mw-mirrored",
            "2 workers": work / "mw-two"}
    if ctx.quick:
        del runs["mirrored"]
    acc = {name: _report(folder) for name, folder in runs.items()}
    pruned = {name: _weights(folder / "step1-prune.keras") for name, folder in runs.items()}
    baseline = {name: _weights(folder / "step0-baseline.keras")[1]
                for name, folder in runs.items()}
    one, two = pruned["1 process"][0], pruned["2 workers"][0]
    total = sum(k.size for k in one)
    differ = sum(int(np.sum((a == 0) != (b == 0))) for a, b in zip(one, two, strict=True))
    masks_equal = differ == 0
    # every Keras model the recipe wrote (trained, pruned, distilled, shared)
    same_as_mirrored = None if ctx.quick else all(np.array_equal(a, b) for path in sorted(
        runs["mirrored"].glob("step*.keras")) for a, b in zip(
            _weights(path)[1], _weights(runs["2 workers"] / path.name)[1], strict=True))
    drift = max(float(np.max(np.abs(a - b))) for a, b in zip(
        baseline["1 process"], baseline["2 workers"], strict=True))
    where = None
    if not ctx.quick:
        with np.load(work / "mw-updates-none.npz") as f1, \
                np.load(work / "mw-updates-mirrored.npz") as f2:
            where = threshold_distances(dict(f1), dict(f2))
    zeros = [float((k == 0).mean()) for k in two]
    steps = list(acc["1 process"])
    rows = [[step, f"{acc['1 process'][step]:.4f}",
             f"{acc['mirrored'][step]:.4f}" if "mirrored" in acc else "-",
             f"{acc['2 workers'][step]:.4f}",
             f"{100 * abs(acc['2 workers'][step] - acc['1 process'][step]):.2f}"]
            for step in steps]
    sec.add(
        f"LeNet-300-100 on mnist5k, {epochs} epoch(s) per stage, global batch 64, seed "
        f"{ctx.seed}; 2 workers = `compress launch --workers 2 run` on 127.0.0.1, ring "
        "all-reduce on CPU; mirrored = `--strategy mirrored` over 2 logical CPU devices"
        + (" (not run in quick mode)." if ctx.quick else ". Distillation starts from the "
           "pruned model; k-means, hashing and QAT from the trained one.") + "\n\n"
        + table(["step", "1 process acc.", "mirrored acc.", "2 workers acc.",
                 "2 workers - 1 process (pts)"], rows)
        + f"\n\nPruned masks, 2 workers vs 1 process: {total - differ} of {total} entries "
        f"agree ({(total - differ) / total:.3%}; layer sparsity "
        + ", ".join(f"{z:.1%}" for z in zeros) + ")."
        + _explained(same_as_mirrored, drift, where) + "\n\n"
        + table(["run", "wall seconds (incl. TensorFlow start)"],
                [[k, f"{v:.1f}"] for k, v in seconds.items()])
        + "\n\nOn this 2-core machine the two workers share the cores one process "
        "uses, and every step adds an all-reduce over gRPC: the ratio measures the "
        "overhead, not a speed-up (that needs one machine, or one GPU, per worker).")
    for step in steps:
        diff = 100 * abs(acc["2 workers"][step] - acc["1 process"][step])
        sec.target(f"2 workers vs 1 process, {step}: accuracy difference <= 0.5 pts",
                   f"{diff:.2f} pts", "0.5 pts", diff <= 0.5)
    sec.target("2 workers vs 1 process: identical pruning masks",
               str(masks_equal) if masks_equal else
               f"False ({(total - differ) / total:.2%} of entries agree; the others within "
               f"{where['max_distance']:.0%} of the threshold)" if where else
               f"False ({(total - differ) / total:.2%} of entries agree)", "True",
               masks_equal)
    if same_as_mirrored is not None:
        sec.target("2 workers vs mirrored on 2 devices (the same 2-replica arithmetic): "
                   "identical weights of every model written", str(same_as_mirrored), "True",
                   same_as_mirrored)
    ratio = seconds["2 workers"] / seconds["1 process"]
    sec.target("time of 2 local workers / 1 process (reported; 2 cores, not a speed-up)",
               f"{ratio:.2f}x", "reported", True)
    return sec


CASES = {"multiworker": case_multiworker}
