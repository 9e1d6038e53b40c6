"""TFMOT on MobileNetV2: gradual magnitude pruning of our trained weights, under tf_keras.

The peer side of the ``tfmot-mobilenetv2`` case (``bench/cases/tfmot_mobilenetv2.py``,
issue 20). Like :mod:`bench.peers.tfmot_peer` it runs in its own process with
``TF_USE_LEGACY_KERAS=1`` (TFMOT accepts only legacy Keras 2 models). It builds
``tf_keras.applications.MobileNetV2`` (alpha, input shape and classes as given,
``weights=None``, BatchNorm momentum as ours), loads the Keras 3 model's weights into it
*by order* from ``--weights`` (an ``.npz`` of ``w0, w1, ...`` = ``model.get_weights()``),
and checks that the copy predicts what ours predicts on the test split (``ref`` in the
same file): argmax agreement and the largest probability difference. A copy that does
not agree stops the script with exit code 3 and one line: comparing pruning from two
different starting points would be meaningless. Then, for each sparsity, from the same
weights: ``prune_low_magnitude`` + ``PolynomialDecay`` (0 -> target, power 3, over the
first ``--end-fraction`` of the steps, updated every ``--frequency`` steps), Adam at
``--lr``, ``fit`` for ``--epochs`` with validation on the val split, ``strip_pruning``;
accuracy on the test split (also after re-estimating the BatchNorm statistics,
:func:`reestimated_bn`) and the zero fraction of the pruned kernels.

Example:

```
TF_USE_LEGACY_KERAS=1 python -m bench.peers.tfmot_mobilenetv2 --data d.npz \\
    --weights w.npz --out tfmot.json --epochs 2 --sparsities 0.5 0.8
```
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

AGREEMENT_MIN = 0.999  # argmax agreement of the tf_keras copy with ours on the test split
PROB_DIFF_MAX = 1e-3  # largest absolute difference of a predicted probability
PRUNED_CLASSES = ("Conv2D", "Dense")  # what TFMOT 0.8's registry prunes in MobileNetV2


def end_step(n_train: int, batch_size: int, epochs: int, end_fraction: float,
             frequency: int) -> tuple[int, int]:
    """``(end_step, total_steps)``: ``end_step`` a multiple of ``frequency``, so TFMOT's
    ``PolynomialDecay`` (which prunes only on its frequency grid) reaches the target.

    >>> end_step(7200, 64, 2, 2 / 3, 25)
    (150, 226)

    Raises:
        ValueError: ``frequency`` longer than the ramp (the target would never be reached).
    """
    steps = math.ceil(n_train / batch_size) * epochs
    end = int(steps * end_fraction) // frequency * frequency
    if end < frequency:
        raise ValueError(f"--frequency {frequency} is longer than the sparsity ramp "
                         f"({int(steps * end_fraction)} of {steps} steps): lower it")
    return end, steps


def pruned_kernel_sparsity(model) -> dict:
    """Zero fraction of the kernels both sides prune (Conv2D and Dense: TFMOT's registry
    leaves DepthwiseConv2D dense, so ours is given the same layers): overall, the
    least-pruned layer's, the kernels left (almost) dense, and the depthwise kernels'.

    Works on a Keras 3 and on a tf_keras model (it reads class names and weight names).
    """
    zero = total = dw_zero = dw_total = 0
    least, dense = 1.0, []
    for layer in model.layers:
        kind = type(layer).__name__
        for w in layer.weights:
            if "kernel" not in w.name:
                continue
            a = np.asarray(w.numpy())
            if kind not in PRUNED_CLASSES:
                dw_zero += int(np.sum(a == 0))
                dw_total += a.size
                continue
            zero += int(np.sum(a == 0))
            total += a.size
            least = min(least, float(np.mean(a == 0)))
            if np.mean(a == 0) < 0.01:
                dense.append(f"{layer.name} ({kind}, {a.size} weights)")
    return {"kernel_sparsity": zero / max(total, 1), "min_layer_sparsity": least,
            "kernel_weights": total, "unpruned_kernels": dense,
            "other_kernel_sparsity": dw_zero / max(dw_total, 1)}


def reestimated_bn(model, x, batches: int = 30, size: int = 240):
    """``model`` with its BatchNorm moving statistics re-estimated on ``x`` (in place).

    Each mask update changes the activations; with momentum 0.99 the moving statistics
    of the last fine-tuning steps still remember the denser network. Momentum 0.9 over
    ``batches`` forward passes in training mode (no weight update) leaves 0.9^30 = 4% of
    the old statistics. The same on both sides; works with Keras 3 and tf_keras (their
    BatchNormalization layers update the statistics in an eager training-mode call).
    """
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.9
    size = min(size, len(x))
    for i in range(min(batches, len(x) // size)):
        model(x[i * size:(i + 1) * size], training=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.tfmot_mobilenetv2",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help=".npz with x_train, y_train, x_val, y_val, "
                   "x_test, y_test")
    p.add_argument("--weights", required=True, help=".npz with w0..wN (by order) and ref "
                   "(our test-split probabilities)")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--bn-momentum", type=float, default=0.99)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--end-fraction", type=float, default=2 / 3)
    p.add_argument("--frequency", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        print("error: run with TF_USE_LEGACY_KERAS=1 (TFMOT needs legacy Keras 2)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    try:
        results = run(args)
    except (CopyMismatch, BadSettings) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, CopyMismatch) else 2
    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return 0


class CopyMismatch(Exception):
    """The tf_keras copy does not reproduce our model."""


class BadSettings(Exception):
    """Settings that would not run the schedule the case asks for."""


def run(args) -> dict:
    with np.load(args.data, allow_pickle=False) as f:
        d = {k: f[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    with np.load(args.weights, allow_pickle=False) as f:
        weights = [f[f"w{i}"] for i in range(sum(k.startswith("w") for k in f.files))]
        ref = f["ref"]
    try:
        end, steps = end_step(len(d["x_train"]), args.batch_size, args.epochs,
                              args.end_fraction, args.frequency)
    except ValueError as exc:
        raise BadSettings(str(exc)) from None

    t0 = time.perf_counter()
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    import_seconds = time.perf_counter() - t0
    import importlib.metadata as md

    from bench.peers.tfmot_peer import fingerprint

    def seed():
        keras.utils.set_random_seed(args.seed)
        with contextlib.suppress(Exception):  # already enabled, or not on this build
            tf.config.experimental.enable_op_determinism()

    def build():
        model = keras.applications.MobileNetV2(
            input_shape=d["x_train"].shape[1:], alpha=args.alpha, weights=None,
            classes=args.classes)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = args.bn_momentum
        shapes = [tuple(w.shape) for w in model.get_weights()]
        theirs = [tuple(w.shape) for w in weights]
        if shapes != theirs:
            at = next((i for i, (a, b) in enumerate(zip(shapes, theirs)) if a != b),
                      min(len(shapes), len(theirs)))
            raise CopyMismatch(f"tf_keras MobileNetV2 has {len(shapes)} weight arrays, ours "
                               f"{len(theirs)}; the shapes first differ at index {at}")
        model.set_weights(weights)
        return model

    def acc(model):
        pred = model.predict(d["x_test"], batch_size=256, verbose=0)
        return float(np.mean(np.argmax(pred, -1) == d["y_test"])), pred

    seed()
    base = build()
    base_acc, pred = acc(base)
    agreement = float(np.mean(np.argmax(pred, -1) == np.argmax(ref, -1)))
    diff = float(np.max(np.abs(pred - ref)))
    if agreement < AGREEMENT_MIN or diff > PROB_DIFF_MAX:
        raise CopyMismatch(f"the tf_keras MobileNetV2 loaded with our weights does not "
                           f"reproduce our model on the test split (argmax agreement "
                           f"{agreement:.4f} < {AGREEMENT_MIN} or max probability difference "
                           f"{diff:.2e} > {PROB_DIFF_MAX:g})")

    res = {
        "settings": {k: getattr(args, k) for k in ("alpha", "classes", "bn_momentum", "epochs",
                                                   "batch_size", "lr", "sparsities",
                                                   "end_fraction", "frequency", "seed")},
        "versions": {n: md.version(n) for n in ("tensorflow", "tensorflow-model-optimization",
                                                "tf_keras")},
        "import_seconds": import_seconds,
        "data": {"n_train": len(d["x_train"]), "n_val": len(d["x_val"]),
                 "n_test": len(d["x_test"]),
                 "test_fingerprint": fingerprint(d["x_test"], d["y_test"]),
                 "train_fingerprint": fingerprint(d["x_train"], d["y_train"])},
        "copy": {"accuracy": base_acc, "argmax_agreement": agreement,
                 "max_prob_diff": diff, "weight_arrays": len(weights)},
        "schedule": {"end_step": end, "frequency": args.frequency, "total_steps": steps,
                     "power": 3},
        "methods": {}, "errors": {},
    }
    del base
    for s in args.sparsities:
        name = f"prune-{round(s * 100)}"
        try:
            keras.backend.clear_session()
            seed()
            t = time.perf_counter()
            schedule = tfmot.sparsity.keras.PolynomialDecay(
                initial_sparsity=0.0, final_sparsity=s, begin_step=0, end_step=end,
                frequency=args.frequency)
            pruned = tfmot.sparsity.keras.prune_low_magnitude(build(),
                                                              pruning_schedule=schedule)
            pruned.compile(optimizer=keras.optimizers.Adam(args.lr),
                           loss=keras.losses.SparseCategoricalCrossentropy(),
                           metrics=["accuracy"])
            tf_ = time.perf_counter()
            pruned.fit(d["x_train"], d["y_train"], epochs=args.epochs,
                       batch_size=args.batch_size, validation_data=(d["x_val"], d["y_val"]),
                       callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0,
                       shuffle=True)
            fit_secs = time.perf_counter() - tf_
            stripped = tfmot.sparsity.keras.strip_pruning(pruned)
            secs = time.perf_counter() - t  # build + wrap + compile + fit + strip
            row = {"method": f"TFMOT prune_low_magnitude {s:.0%} (PolynomialDecay)",
                   "target_sparsity": s, "accuracy": acc(stripped)[0],
                   **pruned_kernel_sparsity(stripped), "seconds": secs,
                   "fit_seconds": fit_secs}
            row["accuracy_bn_reestimated"] = acc(reestimated_bn(stripped, d["x_train"]))[0]
            res["methods"][name] = row
        except Exception as exc:  # noqa: BLE001 - one sparsity failing must not lose the other
            traceback.print_exc()
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:400]
    return res


if __name__ == "__main__":
    sys.exit(main())
