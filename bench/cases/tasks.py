"""The model's own task (#18): a regression MLP pruned and quantized, reported as MSE."""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table

SPARSITY = 0.8


def _data(name: str, seed: int, samples: int = 4000):
    """A standardised regression dataset split 70/10/20, as a compress Dataset."""
    from compress.data import Dataset

    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
    else:  # California-style synthetic data: 8 features, nonlinear targets
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=samples, n_features=8, noise=0.5, random_state=seed)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    n_test, n_val = len(x) // 5, len(x) // 10
    mean, std = x[n_test + n_val:].mean(0), x[n_test + n_val:].std(0)
    x = ((x - mean) / std).astype("float32")
    y_mean, y_std = y[n_test + n_val:].mean(), y[n_test + n_val:].std()
    y = ((y - y_mean) / y_std).astype("float32")
    te, va = slice(0, n_test), slice(n_test, n_test + n_val)
    tr = slice(n_test + n_val, None)
    return Dataset(name=name, x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va],
                   x_test=x[te], y_test=y[te], num_classes=0)


def _dense(ds, ctx, epochs: int):
    """An MLP regressor (linear one-unit output) trained on MSE with early stopping."""
    import keras

    from compress import training
    from compress.task import resolve

    training.set_seed(ctx.seed)
    features = ds.x_train.shape[1]
    model = keras.Sequential([keras.Input((features,)),
                              keras.layers.Dense(128, activation="relu", name="fc1"),
                              keras.layers.Dense(128, activation="relu", name="fc2"),
                              keras.layers.Dense(1, name="out")], name=f"mlp_{ds.name}")
    task = resolve(model, y=ds.y_train)  # inferred: regression, mean squared error
    task.compile(model, learning_rate=1e-3)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=15,
                                         restore_best_weights=True)
    training.fit(model, ds, epochs=epochs, batch_size=32, callbacks=[stop], verbose=0)
    return model, task


def case_regression(ctx) -> Section:
    import compress

    sec = Section("Tasks: a regression MLP pruned 80% and quantized to int8, reported as "
                  "MSE", issue="#18")
    epochs, tune = ctx.size(40, 300), ctx.size(10, 60)
    rows = []
    for name in ("diabetes", "friedman"):
        ds = _data(name, ctx.seed, ctx.size(1000, 4000))
        dense, task = _dense(ds, ctx, epochs)
        pruned, info = compress.prune(dense, ds, sparsity=SPARSITY, epochs=tune,
                                      learning_rate=5e-4, restore_best=True, seed=ctx.seed)
        dense_mse = task.evaluate(dense, ds.x_test, ds.y_test)["mse"]
        pruned_mse = task.evaluate(pruned, ds.x_test, ds.y_test)["mse"]
        _, q = compress.quantize(dense, ds, mode="int8", latency=False, seed=ctx.seed)
        rows.append([name, len(ds.x_train), len(ds.x_test), f"{dense_mse:.4f}",
                     f"{pruned_mse:.4f} ({pruned_mse / dense_mse:.3f}x)",
                     f"{q['float_mse']:.4f}", f"{q['mse']:.4f} ({q['mse'] / q['float_mse']:.3f}x)",
                     f"{q['sqnr_db']:.1f} dB"])
        sec.target(f"{name}: {SPARSITY:.0%} pruned + {tune} fine-tuning epochs, test MSE vs "
                   "dense", f"{pruned_mse / dense_mse:.3f}x", "<= 1.10x",
                   pruned_mse <= 1.10 * dense_mse)
        sec.target(f"{name}: int8 TFLite test MSE vs float TFLite",
                   f"{q['mse'] / q['float_mse']:.3f}x", "<= 1.05x",
                   q["mse"] <= 1.05 * q["float_mse"])
        sec.target(f"{name}: the int8 check is SQNR (a one-unit output has no top-1), and "
                   "passes", f"{q['sqnr_db']:.1f} dB, verified {q['verified']}",
                   ">= 20 dB, no top-1 key", q["verified"] and "top1_agreement" not in q)
        if name == "diabetes":
            sec.add(f"Task chosen for the uncompiled MLP: {task.describe()}. The pruned "
                    f"model's fine-tuning: {info['task']}.")
    sec.add("Targets standardised (zero mean, unit variance on train): an MSE of 1.0 is the "
            "mean predictor. Dense MLP 128-128-1 (ReLU, linear output), Adam 1e-3, batch 32, "
            "early stopping on val MSE (patience 15); magnitude pruning one-shot to 80% of "
            "every Dense kernel, then fine-tuned on the model's own loss (MSE) at 5e-4 with "
            "the best val-loss epoch kept; full-integer int8 TFLite calibrated on 256 "
            "training samples. Both MSEs of the int8 row are measured in LiteRT. `friedman`: "
            "scikit-learn's `make_friedman1` (4,000 samples, 8 features, noise 0.5).")
    sec.add(table(["data", "train", "test", "dense MSE", "pruned 80% MSE", "float TFLite MSE",
                   "int8 TFLite MSE", "int8 SQNR"], rows))
    return sec


CASES = {"tasks-regression": case_regression}
