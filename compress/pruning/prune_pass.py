"""``prune``: the pruning pass (one-shot, gradual, iterative; unstructured, 2:4, units)."""

from __future__ import annotations

import time

import numpy as np

from compress.errors import CompressError
from compress.options import Option, Schema

PRUNE_OPTIONS = Schema("prune", [
    Option("method", str, "magnitude", "saliency criterion: |w| or Optimal Brain Damage",
           choices=("magnitude", "obd")),
    Option("sparsity", float, 0.9, "fraction of weights (or units with --structured) removed",
           low=0.0, high=1.0, high_inclusive=False),
    Option("schedule", str, "oneshot", "oneshot, gradual (polynomial, Zhu & Gupta) or "
           "iterative prune-retrain rounds (Han et al.)",
           choices=("oneshot", "gradual", "iterative")),
    Option("structured", bool, False, "remove whole units/filters and rebuild smaller layers"),
    Option("two_four", bool, False, "semi-structured 2:4 sparsity (2 of every 4 input weights)"),
    Option("block", int, 1, "remove weights in blocks of N consecutive inputs of one unit: "
           "runs of zeros that zip smaller (TFLite stores Dense kernels input-minor)", low=1),
    Option("scope", str, "layer", "rank weights within each layer (same sparsity in each), "
           "across all layers (one threshold), or within each layer at per-layer sparsities "
           "set by the validation loss measured when pruning each layer alone (sensitivity; "
           "needs --data)", choices=("layer", "global", "sensitivity")),
    Option("quality", float, None, "Han et al.'s per-layer threshold quality x std(w) "
           "(replaces --sparsity)", low=0.0, low_inclusive=False),
    Option("estimator", str, "backprop", "OBD Hessian-diagonal estimator",
           choices=("backprop", "gauss_newton", "hutchinson", "fisher")),
    Option("damping", float, 0.0, "OBD: Levenberg-Marquardt damping added to the Hessian "
           "diagonal, relative to each layer's mean (0: plain OBD; large: ranks like "
           "magnitude)", low=0.0),
    Option("calibration", int, 1024, "training samples used for OBD saliencies", low=1),
    Option("epochs", int, 0, "fine-tuning epochs (needs --data)", low=0),
    Option("rounds", int, 3, "prune-retrain rounds of the iterative schedule", low=1),
    Option("learning_rate", float, 5e-4, "fine-tuning learning rate", low=0.0,
           low_inclusive=False),
    Option("batch_size", int, 64, "fine-tuning batch size", low=1),
    Option("frequency", int, 50, "steps between mask updates (gradual)", low=1),
    Option("layers", list, None, "layers to prune: names, class names or regexes",
           flag="--layers"),
    Option("skip_first_last", bool, False, "leave the first and last prunable layers dense"),
    Option("norm", str, "l2", "unit norm ranking units for --structured magnitude "
           "(bn: |gamma| / sqrt(var + eps) x L1, the scale of the following BatchNorm)",
           choices=("l1", "l2", "bn")),
    Option("distill", bool, False, "fine-tune by distillation from the original model"),
    Option("balance", bool, False, "rank the weights of each output unit separately: every "
           "unit keeps the same fraction of its inputs, so no unit or class is cut off "
           "(with --scope global the threshold still sets each layer's sparsity)"),
    Option("steps", int, 1, "saliency re-estimations within one pruning round (OBD: delete "
           "a few, re-estimate, repeat; no retraining between steps)", low=1),
    Option("restore_best", bool, False, "gradual/fine-tuning: keep the weights of the epoch "
           "with the best validation accuracy (gradual: only once the final sparsity is "
           "reached)"),
    Option("cosine", bool, False, "fine-tune with a cosine learning-rate decay"),
])


def saliency_scores(model, variables, method, calibration=None, estimator="backprop",
                    damping=0.0):
    """Per-weight saliencies (one array per variable): ``|w|`` or OBD's ``h w^2 / 2``
    (with ``damping``, the Levenberg-Marquardt ``(h + damping * mean(h)) w^2 / 2``)."""
    from compress.pruning.magnitude import magnitude_saliency

    if method == "magnitude":
        return [magnitude_saliency(np.asarray(v)) for v in variables]
    from compress.pruning.obd import obd_saliency

    x, y = calibration
    return obd_saliency(model, x, y, variables, estimator=estimator, damping=damping)


def _check_data(model, data, opts) -> None:
    wants = []
    if opts["method"] == "obd":
        wants.append("OBD saliencies")
    if opts["epochs"]:
        wants.append("fine-tuning (epochs > 0)")
    if opts["schedule"] != "oneshot":
        wants.append(f"the {opts['schedule']} schedule")
    if opts["distill"]:
        wants.append("distillation")
    if opts["scope"] == "sensitivity":
        wants.append("the sensitivity scope")
    if wants and data is None:
        raise CompressError(f"prune: {' and '.join(wants)} need(s) data; without data only "
                            "data-free magnitude one-shot pruning is possible")
    if opts["schedule"] != "oneshot" and not opts["epochs"]:
        raise CompressError(f"prune: the {opts['schedule']} schedule trains; give epochs >= 1")
    if opts["scope"] == "sensitivity" and (opts["schedule"] == "gradual" or opts["structured"]
                                           or opts["quality"] is not None or opts["two_four"]):
        raise CompressError("prune: scope 'sensitivity' works with unstructured oneshot or "
                            "iterative pruning by --sparsity")
    if opts["structured"] and opts["two_four"]:
        raise CompressError("prune: --structured removes whole units and --two-four zeros 2 of "
                            "every 4 weights; choose one")
    if opts["block"] > 1 and (opts["structured"] or opts["two_four"]
                              or opts["quality"] is not None or opts["scope"] == "sensitivity"):
        raise CompressError("prune: --block works with unstructured pruning by --sparsity "
                            "(layer or global scope), not with --structured, --two-four, "
                            "--quality or scope 'sensitivity'")
    if opts["distill"] and not opts["epochs"]:
        raise CompressError("prune: distillation fine-tunes; give epochs >= 1")
    if data is not None:
        want = tuple(model.inputs[0].shape[1:])
        have = tuple(data.x_train.shape[1:])
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
            raise CompressError(f"prune: data '{data.name}' samples have shape {have} but the "
                                f"model takes {want}")
        out = int(model.outputs[0].shape[-1])
        if data.num_classes > out:
            raise CompressError(f"prune: data '{data.name}' has {data.num_classes} classes but "
                                f"the model has {out} outputs")


def prune(model, data=None, *, verbose=0, **options):
    """Prune a Keras model; return a new plain Keras model and a JSON-ready report.

    Example:

    >>> pruned, info = prune(model, ds, method="obd", sparsity=0.8)   # doctest: +SKIP
    >>> info["sparsity_reached"]                                       # doctest: +SKIP
    0.8

    Args:
        model: a Keras model; never modified.
        data: a :class:`compress.data.Dataset` prepared for the model, or None (then only
            data-free magnitude one-shot pruning is possible).
        verbose: Keras ``fit`` verbosity, default 0.
        **options: see ``PRUNE_OPTIONS``: ``method`` (``"magnitude"``), ``sparsity``
            (0.9), ``schedule`` (``"oneshot"``), ``structured`` (False), ``two_four``,
            ``scope`` (``"layer"``; ``"global"``; ``"sensitivity"``: per-layer sparsities
            from the validation loss measured with each layer pruned alone, see
            :mod:`compress.pruning.sensitivity`), ``quality``, ``estimator``, ``damping`` (0.0, OBD's
            Levenberg-Marquardt term), ``balance`` (False), ``calibration``, ``epochs`` (0),
            ``rounds``, ``learning_rate``, ``batch_size``, ``frequency``, ``layers``,
            ``skip_first_last``, ``norm``, ``distill`` (False), ``steps`` (1),
            ``restore_best`` (False), ``cosine`` (False).

    Returns:
        ``(new_model, info)``; ``info`` holds the sparsity reached per layer.

    Raises:
        CompressError: bad options, missing or mismatched data, no prunable layer.
    """
    from compress import training
    from compress.pruning import masks

    opts = PRUNE_OPTIONS.validate(options)
    _check_data(model, data, opts)
    original = model
    model = training.copy_model(model)
    info = {"method": opts["method"], "schedule": opts["schedule"],
            "sparsity_requested": opts["sparsity"]}
    if opts["two_four"]:  # the 2:4 pattern fixes the sparsity; --sparsity is not used
        info.update(pattern="2:4", sparsity_requested=0.5)
    if opts["method"] == "obd":
        info["estimator"] = opts["estimator"]
    calib = None if data is None else (data.x_train[:opts["calibration"]],
                                       data.y_train[:opts["calibration"]])

    if opts["structured"]:
        from compress.pruning.structured import prune_units

        if opts["schedule"] != "oneshot":
            raise CompressError("prune: --structured supports the oneshot schedule "
                                "(then fine-tune with --epochs)")
        t0 = time.perf_counter()
        model, sinfo = prune_units(model, opts["sparsity"], method=opts["method"],
                                   calibration=calib, estimator=opts["estimator"],
                                   norm=opts["norm"], layers=opts["layers"])
        info.update(sinfo, saliency_seconds=time.perf_counter() - t0)
        if opts["epochs"]:
            _fine_tune(original, model, data, opts, opts["epochs"], verbose, masked=False)
        info["fine_tune_epochs"] = opts["epochs"]
        return model, info

    pairs = masks.prunable_weights(model, opts["layers"], opts["skip_first_last"])
    variables = [v for _, v in pairs]
    t_saliency = 0.0
    if opts["schedule"] == "gradual":
        from compress.callbacks.pruning import Pruning

        cb = Pruning(sparsity=opts["sparsity"], frequency=opts["frequency"],
                     method=opts["method"], scope=opts["scope"], layers=opts["layers"],
                     skip_first_last=opts["skip_first_last"], calibration=calib,
                     estimator=opts["estimator"], balance=opts["balance"],
                     damping=opts["damping"], block=opts["block"])
        training.compile_classifier(model, opts["learning_rate"] * 2)
        extra = _extra_callbacks(opts, opts["learning_rate"] * 2, opts["epochs"],
                                 start=_final_epoch(opts["epochs"]))
        training.fit(model, data, epochs=opts["epochs"], batch_size=opts["batch_size"],
                     callbacks=[cb] + extra, verbose=verbose)
        info["mask_updates"] = len(cb.updates)
    else:
        rounds = opts["rounds"] if opts["schedule"] == "iterative" else 1
        for r in range(1, rounds + 1):
            before = 1 - (1 - opts["sparsity"]) ** ((r - 1) / rounds)
            target = 1 - (1 - opts["sparsity"]) ** (r / rounds)
            n_steps = 1 if opts["quality"] is not None or opts["two_four"] else opts["steps"]
            for k in range(1, n_steps + 1):
                # Geometric steps from `before` to `target`, saliencies re-estimated each.
                step_target = 1 - (1 - before) * ((1 - target) / (1 - before)) ** (k / n_steps)
                t0 = time.perf_counter()
                new_masks = _masks(model, variables, opts, calib, step_target, data)
                t_saliency += time.perf_counter() - t0
                for var, m in zip(variables, new_masks):
                    masks.set_mask(var, m)
            epochs = opts["epochs"] if rounds == 1 else max(1, opts["epochs"] // rounds)
            if opts["epochs"]:
                _fine_tune(original, model, data, opts, epochs, verbose, masked=True)
        masks.release_zeros(model)
        if opts["method"] == "obd":
            info["saliency_seconds"] = t_saliency
        info["fine_tune_epochs"] = opts["epochs"]
    info.update(_sparsity_info(pairs))
    return model, info


def _masks(model, variables, opts, calib, target, data=None):
    from compress.pruning import masks
    from compress.pruning.magnitude import han_threshold_mask

    if opts["quality"] is not None and not opts["two_four"]:
        return [han_threshold_mask(np.asarray(v), opts["quality"]) * _old(v) for v in variables]
    scores = saliency_scores(model, variables, opts["method"], calib, opts["estimator"],
                             opts["damping"])
    # Weights pruned in an earlier round stay pruned: rank them lowest.
    scores = [np.where(_old(v) > 0, s, -np.inf) for v, s in zip(variables, scores)]
    if opts["two_four"]:
        return [masks.n_m_mask(s, 2, 4) for s in scores]
    if opts["scope"] == "sensitivity":
        from compress.pruning.sensitivity import sensitivity_masks

        out, _ = sensitivity_masks(model, variables, scores, data.x_val, data.y_val, target,
                                   opts["balance"])
        return out
    return masks.select_masks(scores, target, opts["scope"], opts["balance"], opts["block"])


def _old(variable):
    from compress.pruning.masks import get_mask

    m = get_mask(variable)
    return np.ones(tuple(variable.shape), "float32") if m is None else m


def _fine_tune(teacher, model, data, opts, epochs, verbose, masked):
    from compress import training
    from compress.pruning import masks

    if masked:
        masks._drop_compiled(model)
    if opts["distill"]:
        try:
            from compress.distillation import distill
        except ImportError as exc:
            raise CompressError("prune: --distill needs compress.distillation, which is not "
                                "available in this installation") from exc
        student, _ = distill(teacher=teacher, student=model, data=data, temperature=4.0,
                             alpha=0.9, epochs=epochs,
                             learning_rate=opts["learning_rate"],
                             batch_size=opts["batch_size"], verbose=verbose)
        if student is not model:
            model.set_weights(student.get_weights())
        return
    training.compile_classifier(model, opts["learning_rate"])
    training.fit(model, data, epochs=epochs, batch_size=opts["batch_size"], verbose=verbose,
                 callbacks=_extra_callbacks(opts, opts["learning_rate"], epochs, start=0))


def _final_epoch(epochs: int) -> int:
    """First epoch (0-based) that starts at the final sparsity of the default gradual
    schedule, which reaches it after two thirds of the steps."""
    return min(epochs - 1, -(-2 * epochs // 3))


def _extra_callbacks(opts, learning_rate, epochs, start):
    cbs = []
    if opts["cosine"]:
        from compress.callbacks import CosineSchedule

        cbs.append(CosineSchedule(peak_lr=learning_rate, period_epochs=epochs,
                                  floor=learning_rate * 0.05))
    if opts["restore_best"]:
        from compress.callbacks import EarlyStopping

        cbs.append(EarlyStopping(monitor="val_accuracy", mode="max", patience=epochs,
                                 restore_best_weights=True, start_from_epoch=start))
    return cbs


def _sparsity_info(pairs) -> dict:
    from compress.pruning.masks import weight_key

    rows, zeros, total = [], 0, 0
    for layer, var in pairs:
        w = np.asarray(var)
        z = int(w.size - np.count_nonzero(w))
        rows.append({"weight": weight_key(layer, var), "params": int(w.size), "zeros": z,
                     "sparsity": z / w.size})
        zeros += z
        total += int(w.size)
    return {"sparsity_reached": zeros / total if total else 0.0, "pruned_params": total,
            "zeros": zeros, "layers": rows}
