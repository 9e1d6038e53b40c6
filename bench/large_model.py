"""Prune and export a ~25M-parameter model in a fresh process; print peak memory as JSON.

Run as ``python -m bench.large_model [--quick]``; used by the ``large-model`` case so that
the peak resident memory measured (``ru_maxrss``) belongs to this work alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from compress.quiet import import_tensorflow

    import_tensorflow()
    import keras
    import numpy as np

    from compress import export
    from compress.data import load_data, prepare
    from compress.pruning import prune

    width = 1024 if args.quick else 4096
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width // 4, activation="relu"),
        keras.layers.Dense(10, activation="softmax")], name="wide_mlp")
    params = model.count_params()
    ds = prepare(model, load_data("mnist5k", 0))
    result = {"params": params, "rss_after_build_mb": peak_mb()}
    t0 = time.perf_counter()
    pruned, info = prune(model, ds.take(512, 256), method="magnitude", sparsity=0.9,
                         schedule="oneshot")
    result["prune_seconds"] = time.perf_counter() - t0
    result["sparsity"] = float(info.get("sparsity", float("nan")))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        check = export.export_tflite(pruned, Path(tmp) / "wide.tflite", x=ds.x_test[:64])
    result["export_seconds"] = time.perf_counter() - t0
    result["tflite_bytes"] = check["bytes"]
    result["max_abs_diff"] = check["max_abs_diff"]
    result["peak_rss_mb"] = peak_mb()
    del np
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
