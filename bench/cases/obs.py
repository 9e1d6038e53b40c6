"""Layer-wise OBS pruning with compensation (#20) vs magnitude, one-shot, on LeNet-300-100:
accuracy at 50-90% and 2:4 without retraining, and the layer-Hessian pass's cost against a
gradient pass (``pruning-obs``)."""

from __future__ import annotations

import time

from bench.harness import Section, table


def _acc(model, ds):
    from compress.training import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def case_obs(ctx) -> Section:
    from bench.baselines import trained
    from bench.cases.pruning import _gradient_pass_seconds
    from compress.pruning import prune
    from compress.pruning.hessian import layer_hessians
    from compress.pruning.masks import prunable_weights

    sec = Section("Pruning: layer-wise OBS with compensation vs magnitude (one-shot)",
                  issue="#20")
    dense, ds = trained("lenet300", "mnist5k", ctx)
    dense_acc = _acc(dense, ds)
    cal = ctx.size(256, len(ds.x_train))  # as the OBD case: the whole training split
    levels = ctx.size((0.5, 0.9), (0.5, 0.7, 0.8, 0.9))
    columns = {  # name -> prune options
        "magnitude, per layer": {"method": "magnitude", "scope": "layer"},
        "magnitude, global": {"method": "magnitude", "scope": "global"},
        "OBD (layer-Hessian diagonal), per layer": {"method": "obd", "estimator": "layer"},
        "OBS, per layer": {"method": "obs"},
        "OBS, global": {"method": "obs", "scope": "global"},
    }
    res, obs_info = {}, {}
    for name, opts in columns.items():
        res[name] = []
        for s in levels:
            model, info = prune(dense, ds, sparsity=s, calibration=cal, **opts)
            res[name].append(_acc(model, ds))
            if name.startswith("OBS"):
                obs_info[s] = info
    plain = "OBS, global, uncorrected"
    res[plain] = [_acc(_uncorrected(dense, ds.x_train[:cal], s), ds) for s in levels]
    rows = [[f"{s:.0%}"] + [f"{res[n][i]:.2%}" for n in [*columns, plain]]
            for i, s in enumerate(levels)]
    sec.add(f"LeNet-300-100 on mnist5k, dense test accuracy **{dense_acc:.2%}**. One-shot, no "
            f"retraining, {cal} unlabelled training samples for the layer Hessians "
            "(dampening 0.01 x mean diagonal, sequential calibration: each layer's Hessian "
            "from the outputs of the layers already pruned, and its weights first refit by "
            "least squares to the dense model's outputs of that layer; 'uncorrected' is "
            "without that refit, SparseGPT's own sequential mode).\n\n" +
            table(["sparsity", *columns, plain], rows) +
            "\n\n'OBS, global': each layer's sparsity is the one magnitude's global "
            "threshold gives it; OBS chooses and compensates the weights inside each layer "
            "(layer output errors are not comparable across layers, so there is no OBS "
            "threshold of its own).")
    two_four = {}
    for method in ("magnitude", "obs"):
        model, _ = prune(dense, ds, method=method, two_four=True, calibration=cal)
        two_four[method] = _acc(model, ds)
    sec.add(f"2:4 one-shot: magnitude **{two_four['magnitude']:.2%}**, OBS "
            f"**{two_four['obs']:.2%}**.")
    from bench.cases.keras_quant import keras_quantizer_rows

    keras_quantizer_rows(sec, ctx, dense, ds, dense_acc)
    last = obs_info[levels[-1]]["obs"]
    sec.add("Layer-wise OBS at " + f"{levels[-1]:.0%}: " + ", ".join(
        f"{r['weight']} ({r['inputs']} inputs, predicted output error "
        f"{r['predicted_error']:.3g}, Hessian {r['seconds']:.2f} s, OBS {r['obs_seconds']:.2f} s)"
        for r in last["layers"]) + ".")
    for i, s in enumerate(levels):
        if s not in (0.8, 0.9):
            continue
        o, m = res["OBS, per layer"][i], res["magnitude, per layer"][i]
        og, g = res["OBS, global"][i], res["magnitude, global"][i]
        sec.target(f"LeNet-300-100, global threshold, {s:.0%} one-shot: OBS >= magnitude "
                   "(OBS on magnitude's global allocation)", f"{og:.2%} vs {g:.2%}",
                   "obs >= magnitude", og >= g)
        sec.target(f"LeNet-300-100, per layer, {s:.0%} one-shot: OBS >= magnitude",
                   f"{o:.2%} vs {m:.2%}", "obs >= magnitude", o >= m)

    # Cost: one pass of layer Hessians for every layer vs one gradient pass, same samples.
    n = 512
    x, y = ds.x_train[:n], ds.y_train[:n]
    kernels = [v for _, v in prunable_weights(dense)]
    layer_hessians(dense, kernels, x[:128])  # warm-up
    reps = ctx.size(2, 5)
    t_h = min(_timed(lambda: layer_hessians(dense, kernels, x)) for _ in range(reps))
    t_g = min(_gradient_pass_seconds(dense, x, y, batch=128) for _ in range(reps))
    t0 = time.perf_counter()
    prune(dense, ds, method="obs", sparsity=0.5, calibration=n)
    t_obs = time.perf_counter() - t0
    sec.add(f"### Cost ({n} samples, batches of 128, best of {reps})\n\n" +
            table(["pass", "seconds"], [
                ["layer Hessians of all 3 layers, one forward pass", f"{t_h:.3f}"],
                ["one gradient pass (tf.function)", f"{t_g:.3f}"],
                ["whole OBS prune at 50% (sequential: 3 Hessian passes, Cholesky, sweep)",
                 f"{t_obs:.3f}"]]))
    sec.target("Layer-Hessian pass <= 3x one gradient pass over the same 512 samples "
               "(LeNet-300-100)", f"{t_h / t_g:.1f}x", "<= 3x", t_h <= 3 * t_g)
    ctx.facts["obs_oneshot"] = dict(zip(levels, res["OBS, per layer"]))
    return sec


def _uncorrected(dense, x, sparsity):
    import numpy as np

    from compress import training
    from compress.pruning.masks import prunable_weights, select_masks
    from compress.pruning.obs import obs_masks

    model = training.copy_model(dense)
    kernels = [v for _, v in prunable_weights(model)]
    share = [1 - float(m.mean()) for m in select_masks(
        [np.abs(np.asarray(v)) for v in kernels], sparsity, "global")]
    obs_masks(model, kernels, x, share, correct=False)
    return model


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CASES = {"pruning-obs": case_obs}
