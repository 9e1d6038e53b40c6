"""``prune``: the pruning pass (one-shot, gradual, iterative; unstructured, 2:4, units)."""

from __future__ import annotations

import time

import numpy as np

from compress.data import as_dataset
from compress.data.arrays import length
from compress.errors import CompressError
from compress.passes import Pass
from compress.pruning.criteria import criterion, saliency_scores
from compress.pruning.masks import (
    _drop_compiled,
    get_mask,
    matmul_shape,
    n_m_mask,
    prunable_weights,
    release_zeros,
    select_masks,
    select_viewed,
    set_mask,
    weight_key,
)
from compress.pruning.prune_options import PRUNE_OPTIONS, resolve_sparsity

#: The gradual schedule trains at this multiple of ``learning_rate`` (default 5e-4 -> 1e-3).
#: ``learning_rate`` is set for fine-tuning an already pruned model, where a small step
#: keeps what pruning (and OBS's compensation) left; the gradual schedule instead trains
#: from the dense model through every mask update and must recover from each, which the
#: larger (Adam's default) step does in its few epochs. Set with the schedule when it was
#: written; the benchmarks' gradual numbers use it (``info["learning_rate"]`` reports it).
GRADUAL_LR_FACTOR = 2


def _check_data(model, data, opts) -> None:
    if data is None:
        PASS.require_data(opts, data)
    _check_options(opts)
    if data is not None:
        want = tuple(model.inputs[0].shape[1:])
        have = data.sample_shape
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
            raise CompressError(f"prune: data '{data.name}' samples have shape {have} but the "
                                f"model takes {want}")
        from compress.data.arrays import holds_classes

        out = int(model.outputs[0].shape[-1])
        if not holds_classes(out, data.num_classes):
            raise CompressError(f"prune: data '{data.name}' has {data.num_classes} classes but "
                                f"the model has {out} outputs")


def _check_options(opts) -> None:
    """Refuse option combinations the pass cannot run, in one line (a recipe's --check
    runs it too)."""
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
    if opts["quality"] is not None:
        # The threshold rule replaces the ranking: options that shape the ranking would be
        # silently ignored.
        ignored = [flag for flag, on in (
            ("--structured", opts["structured"]), ("--two-four", opts["two_four"]),
            ("--schedule gradual", opts["schedule"] == "gradual"),
            (f"--method {opts['method']}", opts["method"] != "magnitude"),
            (f"--scope {opts['scope']}", opts["scope"] != "layer"),
            ("--balance", opts["balance"]), (f"--steps {opts['steps']}", opts["steps"] > 1))
            if on]
        if ignored:
            raise CompressError(f"prune: --quality is Han et al.'s magnitude threshold per "
                                f"layer and cannot be combined with {ignored[0]}; use "
                                "--sparsity for it")
    if opts["two_four"] and opts["sparsity"] not in (None, 0.5):
        raise CompressError(f"prune: --two-four zeros 2 of every 4 weights (sparsity 0.5); "
                            f"it cannot give --sparsity {opts['sparsity']}")
    if opts["distill"] and not opts["epochs"]:
        raise CompressError("prune: distillation fine-tunes; give epochs >= 1")
    if opts["method"] == "obs" and not opts["structured"] and (
            opts["scope"] == "sensitivity" or opts["block"] > 1 or opts["balance"]):
        raise CompressError("prune: --method obs prunes each layer with compensation "
                            "(scope layer or global); it takes neither --scope sensitivity, "
                            "--block nor --balance")


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
            :mod:`compress.pruning.sensitivity`), ``quality``, ``estimator``, ``damping``
            (0.0, OBD's Levenberg-Marquardt term), ``balance`` (False), ``calibration``,
            ``epochs`` (0), ``rounds``, ``learning_rate`` (5e-4; the gradual schedule
            trains at twice it, :data:`GRADUAL_LR_FACTOR`), ``batch_size``, ``frequency``,
            ``layers``, ``skip_first_last``, ``norm``, ``distill`` (False), ``steps`` (1),
            ``restore_best`` (False), ``cosine`` (False), ``seed`` (0: fine-tuning and
            OBD's random probes), ``bn_recalibrate`` (True: with data, the BatchNorm
            moving statistics are re-estimated at the end, see :func:`_recalibrate`;
            sparsity and weights unchanged). ``layers`` is a list of layer names, class names or
            regular expressions matching the whole name (see
            :func:`compress.layers.select_layers`), as in every pass.

    Returns:
        ``(new_model, info)``; ``info`` holds the sparsity reached per layer.

    Raises:
        CompressError: bad options, missing or mismatched data, no prunable layer, a
            model Keras already quantized (``model.quantize``: start from the float one).
    """
    from compress import training

    opts = PRUNE_OPTIONS.validate(options)
    from compress.io import ensure_signature
    from compress.runtime import refuse_keras_quantized

    refuse_keras_quantized(model)  # its int8 values ranked without their scales: wrong
    model = ensure_signature(model, data)  # a subclassed model: wrapped, with an input
    data = as_dataset(data, model)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    _check_data(model, data, opts)
    opts = resolve_sparsity(opts)
    training.set_seed(opts["seed"])
    from compress.task import resolve, sample_targets

    opts["_task"] = resolve(model, opts["loss"], opts["metrics"], y=sample_targets(data))
    # Inputs only: fine-tuning becomes distillation from the original model (fidelity).
    opts["_labelled"] = data is None or bool(getattr(data, "labelled", True))
    if not opts["_labelled"] and opts["schedule"] == "gradual":
        raise CompressError("prune: the gradual schedule trains on labels and this data has "
                            "none; use --schedule oneshot or iterative with --epochs (then "
                            "fine-tuning distills from the original model)")
    original = model
    model = training.copy_model(model)
    info = {"method": opts["method"], "schedule": opts["schedule"],
            "sparsity_requested": opts["sparsity"]}
    already = _zero_share(model, opts)
    if opts["epochs"]:
        info["task"] = opts["_task"].describe()
        if not opts["_labelled"]:
            info["task"] += "; no labels: fine-tuned by distillation from the original"
    if opts["quality"] is not None:
        info["quality"] = opts["quality"]
    if opts["two_four"]:  # the 2:4 pattern fixes the sparsity; --sparsity is not used
        info.update(pattern="2:4", sparsity_requested=0.5)
    if opts["method"] == "obd":  # the one used: a multi-input/output model's is "layer"
        from compress.pruning.obd import effective_estimator

        info["estimator"] = effective_estimator(model, opts["estimator"])
    # Only the calibration samples are read (a stream is not materialised for them).
    calib = None if data is None else data.spread("train", opts["calibration"])
    if opts["method"] == "obd" and calib is not None and length(calib[0]) < FEW_OBD_SAMPLES:
        # OBS says so through its layer Hessians' rank; OBD's diagonal needs it said too
        n = length(calib[0])
        info["warning"] = (f"OBD's saliencies came from only {n} calibration sample"
                           f"{'s' if n != 1 else ''}, so the ranking of the weights rests "
                           f"on them; give more samples (--calibration, default "
                           f"{PRUNE_OPTIONS.defaults()['calibration']})")
    from compress import progress

    rounds = opts["rounds"] if opts["schedule"] == "iterative" else 1  # the plan: overall ETA
    if opts["schedule"] != "gradual":  # gradual: the schedule's saliencies are in training
        progress.expect("saliency", 2, runs=rounds * (
            1 if opts["quality"] is not None or opts["two_four"] or opts["structured"]
            else opts["steps"]))
    progress.expect("training", opts["epochs"], runs=rounds)

    if opts["structured"]:
        from compress.pruning.structured import prune_units

        if opts["schedule"] != "oneshot":
            raise CompressError("prune: --structured supports the oneshot schedule "
                                "(then fine-tune with --epochs)")
        t0 = time.perf_counter()
        with progress.phase("saliency", detail=f"removing {opts['sparsity']:.0%} of the "
                            f"units ({opts['method']})"):
            if opts["method"] == "obs":  # OBS-chosen channels, consumers refit
                from compress.pruning.structured_obs import prune_channels_obs

                model, sinfo = prune_channels_obs(model, opts["sparsity"], calib[0],
                                                  damp=opts["damp"], norm=opts["norm"],
                                                  layers=opts["layers"])
            else:
                model, sinfo = prune_units(model, opts["sparsity"], method=opts["method"],
                                           calibration=calib, estimator=opts["estimator"],
                                           norm=opts["norm"], layers=opts["layers"],
                                           seed=opts["seed"])
        info.update(sinfo, saliency_seconds=time.perf_counter() - t0)
        if opts["epochs"]:
            _fine_tune(original, model, data, opts, opts["epochs"], verbose, masked=False)
        info["fine_tune_epochs"] = opts["epochs"]
        _recalibrate(model, data, opts, info)  # the consumers of removed units see new inputs
        return model, info

    pairs = prunable_weights(model, opts["layers"], opts["skip_first_last"])
    pairs = _leave_out(model, pairs, opts, info)
    variables = [v for _, v in pairs]
    if opts["schedule"] == "gradual":
        progress.say(f"gradual pruning to {opts['sparsity']:.0%} over {opts['epochs']} "
                     "epochs")
    t_saliency = 0.0
    if opts["schedule"] == "gradual":
        from compress.callbacks.pruning import Pruning

        cb = Pruning(sparsity=opts["sparsity"], frequency=opts["frequency"],
                     method=opts["method"], scope=opts["scope"], layers=opts["layers"],
                     skip_first_last=opts["skip_first_last"], calibration=calib,
                     estimator=opts["estimator"], balance=opts["balance"],
                     damping=opts["damping"], block=opts["block"], seed=opts["seed"])
        lr = opts["learning_rate"] * GRADUAL_LR_FACTOR
        info["learning_rate"] = lr
        opts["_task"].compile(model, lr)
        extra = _extra_callbacks(opts, lr, opts["epochs"],
                                 start=_final_epoch(opts["epochs"]))
        import warnings

        from compress.callbacks.pruning import LeftDenseWarning

        with warnings.catch_warnings():  # the pass reports left_out and frequency itself
            warnings.simplefilter("ignore", LeftDenseWarning)
            warnings.filterwarnings("ignore", message="Pruning: the ramp from step")
            training.fit(model, data, epochs=opts["epochs"], batch_size=opts["batch_size"],
                         callbacks=[cb] + extra, verbose=verbose)
        info["mask_updates"] = len(cb.updates)
        if cb.frequency != opts["frequency"]:
            info["frequency_used"] = (f"{cb.frequency} steps: the schedule's {cb.end_step} "
                                      f"steps are fewer than two updates at frequency "
                                      f"{opts['frequency']}, which would prune all at once")
        if cb.left_out:  # named, never skipped silently
            info["left_out"] = cb.left_out
        _recalibrate(model, data, opts, info)
    else:
        rounds = opts["rounds"] if opts["schedule"] == "iterative" else 1
        final = opts["sparsity"] or 0.0  # None with --quality: each layer's threshold rules
        for r in range(1, rounds + 1):
            before = 1 - (1 - final) ** ((r - 1) / rounds)
            target = 1 - (1 - final) ** (r / rounds)
            n_steps = 1 if opts["quality"] is not None or opts["two_four"] else opts["steps"]
            for k in range(1, n_steps + 1):
                # Geometric steps from `before` to `target`, saliencies re-estimated each.
                step_target = 1 - (1 - before) * ((1 - target) / (1 - before)) ** (k / n_steps)
                t0 = time.perf_counter()
                with progress.phase("saliency", detail=f"round {r}/{rounds}: "
                                    f"{opts['method']} masks to {step_target:.1%} sparsity"):
                    new_masks = _masks(model, variables, opts, calib, step_target, data,
                                       names=[weight_key(layer, var) for layer, var in pairs],
                                       views=[matmul_shape(la, var) for la, var in pairs])
                t_saliency += time.perf_counter() - t0
                for var, m in zip(variables, new_masks):
                    set_mask(var, m)
            epochs = opts["epochs"] if rounds == 1 else max(1, opts["epochs"] // rounds)
            if opts["epochs"]:
                _fine_tune(original, model, data, opts, epochs, verbose, masked=True)
        release_zeros(model)
        _recalibrate(model, data, opts, info)
        if criterion(opts["method"]).needs_data:
            info["saliency_seconds"] = t_saliency
        if "_obs" in opts:
            info["obs"] = opts["_obs"]
            if opts["_obs"].get("thin_hessians"):
                info["warning"] = opts["_obs"]["thin_hessians"]
            blocked = opts["_obs"].get("block_diagonal") or []
            if blocked:  # an approximation: said in the text report, not only in --json
                from compress.pruning.hessian import MAX_DIM

                info["hessian_note"] = (
                    f"{', '.join(blocked[:3])}{' and more' if len(blocked) > 3 else ''}: "
                    f"more than {MAX_DIM:,} inputs per unit, so the layer Hessian is "
                    f"block-diagonal (blocks of {MAX_DIM:,} inputs), an approximation that "
                    "bounds its memory")
        if opts.get("_dense_two_four"):  # named, never skipped silently
            info["two_four_left_dense"] = opts["_dense_two_four"]
        info["fine_tune_epochs"] = opts["epochs"]
    info.update(_sparsity_info(pairs))
    if opts["block"] > 1:
        partial = [f"{weight_key(la, v)} ({v.shape[-2]} inputs)" for la, v in pairs
                   if len(v.shape) >= 2 and v.shape[-2] % opts["block"]]
        if partial:
            info["partial_blocks"] = (
                f"input axes not a multiple of {opts['block']} end in a shorter block: "
                + ", ".join(partial[:6]) + (", ..." if len(partial) > 6 else ""))
    asked = info.get("sparsity_requested")
    if asked is not None and opts["quality"] is None and already > asked + 0.005:
        info["already_sparse"] = (f"the prunable weights were already {already:.1%} zero "
                                  f"before this pass, more than the {asked:.0%} asked; "
                                  "none of their zeros was given back")
    _coverage(model, opts, info)
    return model, info


def _zero_share(model, opts) -> float:
    """The share of zeros in the weights the pass may prune, as it finds them (0.0 where
    the selection is refused: the pass says why, in its own words)."""
    try:
        every = prunable_weights(model, opts["layers"], opts["skip_first_last"])
    except CompressError:
        return 0.0
    zeros, total = _zeros_and_total(every)
    return zeros / total if total else 0.0


def _zeros_and_total(pairs) -> tuple[int, int]:
    """Zero entries and all entries of the ``(layer, variable)`` pairs' weights."""
    total = sum(int(np.prod(v.shape)) for _, v in pairs)
    zeros = sum(int(np.size(v) - np.count_nonzero(np.asarray(v))) for _, v in pairs)
    return zeros, total


def _coverage(model, opts, info) -> None:
    """Say what the requested sparsity did not reach: the prunable weights left dense
    for want of a layer Hessian (OBS, OBD's layer estimator), when they hold a tenth of
    the prunable values or more, as a ``warning`` with the sparsity of all of them; and
    (without ``--layers``) the matrices of layers no pruning method handles
    (``not_reached``: a custom layer's own weights, a ConvLSTM2D), with their sizes."""
    from compress.pruning.masks import listed, unreached_weights

    left = info.get("left_out") or {}
    if left and opts["sparsity"]:
        every = prunable_weights(model, opts["layers"], opts["skip_first_last"])
        zeros, total = _zeros_and_total(every)
        dense = sum(int(np.prod(v.shape)) for la, v in every if weight_key(la, v) in left)
        info["sparsity_of_prunable"] = zeros / total if total else 0.0
        if total and dense >= 0.1 * total:
            word = "weight" if len(left) == 1 else "weights"
            msg = (f"{len(left)} {word} ({dense:,} of the {total:,} prunable values) stay "
                   f"dense for want of a layer Hessian: the prunable weights are "
                   f"{zeros / total:.1%} zero, not the "
                   f"{info.get('sparsity_requested', opts['sparsity']):.0%} asked; "
                   "--method magnitude prunes them all")
            info["warning"] = f"{info['warning']}; {msg}" if info.get("warning") else msg
    if not opts["layers"]:
        missed = unreached_weights(model)
        if missed:
            info["not_reached"] = (f"{listed(missed)}: no pruning method handles these "
                                   "layers' weights; they stay dense")


def _layer_hessians_used(model, opts) -> bool:
    """Whether the saliencies of ``opts`` come from layer Hessians (OBS; OBD's ``layer``
    estimator, which a model with several inputs or outputs always gets)."""
    if opts["quality"] is not None or opts["schedule"] == "gradual":
        return False
    from compress.pruning.obd import uses_layer_hessians

    return uses_layer_hessians(model, opts["method"], opts["estimator"])


def _leave_out(model, pairs, opts, info) -> list:
    """``pairs`` less the weights whose layer Hessian cannot be formed (an Embedding, a
    multi-axis EinsumDense) when the saliencies need one: left dense and named in
    ``info["left_out"]`` ({weight: reason}). Weights the user selected with ``--layers``
    are refused in one line instead, as is a model where nothing is left."""
    if not _layer_hessians_used(model, opts):
        return pairs
    from compress.pruning.hessian import hessian_leave_out

    kept, left = hessian_leave_out(model, pairs, bool(opts["layers"]),
                                   f"prune --method {opts['method']}")
    if left:
        info["left_out"] = left
    return kept


def _recalibrate(model, data, opts, info) -> None:
    """Re-estimate the BatchNorm statistics of the pruned ``model`` (in place) on
    training samples, as the last step of a pass given data (``bn_recalibrate``): the
    moving statistics otherwise still describe the denser network (one-shot: the dense
    one; gradual: a mix of the last mask updates, at momentum 0.99). Only the moving
    mean/variance change: weights, zeros and sparsity stay. ``info["bn_recalibrate"]``
    says how many layers and samples, and the validation scores before and after."""
    from compress import progress
    from compress.pruning.batchnorm import SAMPLES, batchnorm_layers, recalibrate_batchnorm

    if not opts["bn_recalibrate"] or data is None:
        return
    if not batchnorm_layers(model):  # nothing to do, and the report says so
        info["bn_recalibrate"] = {"layers": 0, "samples": 0}
        return
    x = data.spread("train", SAMPLES)[0]
    val = _val_head(data) if opts["_labelled"] else None
    before = None if val is None else opts["_task"].evaluate(model, *val)
    layers = batchnorm_layers(model)
    kept = [(la.moving_mean.numpy(), la.moving_variance.numpy()) for la in layers]
    with progress.phase("bn", detail="re-estimating BatchNorm statistics"):
        out = recalibrate_batchnorm(model, x)
    if val is not None and out["layers"]:
        out.update(val_before=before, val_after=opts["_task"].evaluate(model, *val))
        if _worse(out["val_before"], out["val_after"]):  # the pass's statistics stay
            for layer, (mean, variance) in zip(layers, kept):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
            out["reverted"] = ("the re-estimated statistics scored worse on the validation "
                               "samples; the pruned model keeps the ones it had")
    info["bn_recalibrate"] = out


def _worse(before: dict, after: dict) -> bool:
    """Whether validation scores ``after`` are worse than ``before`` (accuracy lower, or
    MSE higher); False where they cannot be compared (several outputs).

    >>> _worse({"accuracy": 0.375}, {"accuracy": 0.29}), _worse({"mse": 1.0}, {"mse": 0.9})
    (True, False)
    """
    if "accuracy" in before and "accuracy" in after:
        return after["accuracy"] < before["accuracy"]
    if "mse" in before and "mse" in after:
        return after["mse"] > before["mse"]
    return False


def _val_head(data, n: int = 2048):
    """``n`` labelled validation samples (:meth:`spread`), or None when there are none."""
    from compress.data.arrays import length

    try:
        x, y = data.spread("val", n)
    except CompressError:  # a stream without a val split
        return None
    return None if y is None or not length(x) else (x, y)


#: Fewer OBD calibration samples than this, and the prune report warns.
FEW_OBD_SAMPLES = 32

TWO_FOUR_NONE_FIT = ("prune --two-four: no prunable layer has an input dimension divisible "
                     "by 4; use --block 4 or unstructured pruning")


def _masks(model, variables, opts, calib, target, data=None, names=None, views=None):
    """The new 0/1 mask of each of ``variables``. ``views``: per variable, None or the
    ``(inputs, outputs)`` matrix a multi-axis EinsumDense kernel is
    (:func:`~compress.pruning.masks.matmul_shape`): its block and 2:4 groups run along
    that matrix's input axis."""
    from compress.pruning.magnitude import han_threshold_mask

    if opts["quality"] is not None:
        masks = [han_threshold_mask(np.asarray(v), opts["quality"]) * _old(v) for v in variables]
        names = names or [v.name for v in variables]
        for v, m, name in zip(variables, masks, names, strict=True):
            w = np.abs(np.asarray(v))
            if not m.any() and w.any():
                raise CompressError(
                    f"prune: --quality {opts['quality']:g} would zero every weight of {name} "
                    f"(its largest |w| is {w.max() / max(float(np.asarray(v).std()), 1e-30):.3g}"
                    " x std(w)); use a smaller --quality")
        return masks
    if opts["method"] == "obs":  # compensates the kept weights: not a score to rank by
        from compress.pruning.obs import obs_masks

        if opts["scope"] == "global":  # magnitude's one threshold sets each layer's share
            target = [1 - float(m.mean()) for m in select_masks(
                [np.abs(np.asarray(v)) for v in variables], target, "global")]
        masks, opts["_obs"] = obs_masks(model, variables, calib[0], target,
                                        n=2 * opts["two_four"], m=4 * opts["two_four"],
                                        damp=opts["damp"], old=[_old(v) for v in variables])
        if opts["two_four"]:
            rows = opts["_obs"]["layers"]
            if all(r.get("n_m_left_dense") for r in rows):
                raise CompressError(TWO_FOUR_NONE_FIT)
            names = names or [v.name for v in variables]
            opts["_dense_two_four"] = [n for n, r in zip(names, rows, strict=True)
                                       if r.get("n_m_left_dense")]
        return masks
    if opts["two_four"]:  # a depthwise kernel's unit has kh*kw inputs: no 2:4 groups
        opts["_depthwise"] = _depthwise_kernels(model, variables)
    scores = saliency_scores(model, variables, opts["method"], calib, opts["estimator"],
                             opts["damping"], opts["seed"])
    # Weights pruned in an earlier round stay pruned: rank them lowest.
    scores = [np.where(_old(v) > 0, s, -np.inf) for v, s in zip(variables, scores)]
    if opts["scope"] != "sensitivity" and views and any(views):
        old = [np.reshape(_old(v), w) if w else _old(v) for v, w in zip(variables, views)]
        return select_viewed(scores, views, lambda flat: _select(
            flat, old, opts, target, names or [v.name for v in variables]))
    return _select(scores, [_old(v) for v in variables], opts, target,
                   names or [v.name for v in variables], model, variables, data)


def _depthwise_kernels(model, variables) -> list[bool]:
    """Per variable: whether it is a depthwise kernel (DepthwiseConv1D/2D, or the
    depthwise half of a SeparableConv1D/2D), whose units each see only their own
    channel's taps."""
    import keras

    from compress.report import leaf_layers

    owner = {id(w): layer for layer in leaf_layers(model) for w in layer.weights}
    depthwise = (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)
    separable = (keras.layers.SeparableConv2D, keras.layers.SeparableConv1D)
    out = []
    for v in variables:
        layer = owner.get(id(v))
        out.append(isinstance(layer, depthwise) or (
            isinstance(layer, separable) and v is getattr(layer, "depthwise_kernel", None)))
    return out


def _select(scores, olds, opts, target, names, model=None, variables=None, data=None):
    if opts["two_four"]:
        # A kernel whose input dimension is not a multiple of 4 (a first convolution on 1 or
        # 3 channels) stays dense, as NVIDIA's ASP leaves it; none fitting is refused.
        # A depthwise kernel's axis -2 is its channels, not a unit's inputs (each channel
        # has kh*kw taps): grouping across channels is no N:M pattern; it stays dense, as
        # OBS leaves it (obs.n_m_fits).
        depthwise = opts.get("_depthwise") or [False] * len(scores)
        fits = [np.ndim(s) >= 2 and np.shape(s)[-2] % 4 == 0 and not dw
                for s, dw in zip(scores, depthwise, strict=True)]
        if not any(fits):
            raise CompressError(TWO_FOUR_NONE_FIT)
        opts["_dense_two_four"] = [n for n, ok in zip(names, fits) if not ok]
        return [n_m_mask(s, 2, 4) if ok else o for s, o, ok in zip(scores, olds, fits)]
    if opts["scope"] == "sensitivity":
        from compress.pruning.sensitivity import held_out, sensitivity_masks

        out, _ = sensitivity_masks(model, variables, scores, *held_out(data), target,
                                   opts["balance"], task=opts.get("_task"))
        return out
    return select_masks(scores, target, opts["scope"], opts["balance"], opts["block"])


def _old(variable):
    m = get_mask(variable)
    return np.ones(tuple(variable.shape), "float32") if m is None else m


def _fine_tune(teacher, model, data, opts, epochs, verbose, masked):
    from compress import progress, training

    progress.say(f"fine-tuning {epochs} epoch(s)"
                 + (" by distillation from the original" if opts["distill"]
                    or not opts["_labelled"] else ""))

    if masked:
        _drop_compiled(model)
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
    if not opts["_labelled"]:  # inputs only: the original model is the teacher
        opts["_task"].fit_to_teacher(
            model, teacher, data, epochs=epochs, learning_rate=opts["learning_rate"],
            batch_size=opts["batch_size"], verbose=verbose,
            callbacks=_extra_callbacks(opts, opts["learning_rate"], epochs, start=0))
        return
    opts["_task"].compile(model, opts["learning_rate"])
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

        # A regression has no accuracy: its own loss says which epoch was best.
        monitor = ("val_accuracy" if opts["_task"].is_classifier and opts["_labelled"]
                   else "val_loss")
        cbs.append(EarlyStopping(monitor=monitor, mode="max" if monitor == "val_accuracy"
                                 else "min", patience=epochs,
                                 restore_best_weights=True, start_from_epoch=start))
    return cbs


def _sparsity_info(pairs) -> dict:
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


def needs_data(opts: dict) -> list[str]:
    """The prune options that need data (empty: data-free magnitude one-shot pruning)."""
    return [reason for reason, on in (
        (f"method {opts['method']}", criterion(opts["method"]).needs_data),
        (f"epochs {opts['epochs']}", bool(opts["epochs"])),
        (f"schedule {opts['schedule']}", opts["schedule"] != "oneshot"),
        ("distill", opts["distill"]),
        (f"scope {opts['scope']}", opts["scope"] == "sensitivity")) if on]


PASS = Pass("prune", "zero the least salient weights (magnitude, OBD, OBS with "
            "compensation; unstructured, 2:4, blocks) or remove whole units",
            "compress.pruning.prune_pass:prune",
            PRUNE_OPTIONS, needs_data=needs_data, trains=True, order=20, check=_check_options,
            data_hint="without data only data-free magnitude one-shot pruning is possible")
