"""A training command interrupted at an epoch and run again with the same checkpoint folder
ends with the same model as an uninterrupted run: same masks, same weights.

Each case runs a pass three times in a :class:`TrainingContext`, as the CLI's
``--checkpoint-dir`` does: uninterrupted; interrupted by a Ctrl-C (KeyboardInterrupt) at the
end of an epoch of one of its fits, before that epoch's backup; and again, which replays the
finished fits and resumes the interrupted one. Every run starts from ``set_seed(0)``, as a
new process of the CLI does.
"""

from __future__ import annotations

import contextlib
import json

import keras
import numpy as np
import pytest

from compress import training
from compress.training_context import TrainingContext, current_context

ATOL = 1e-6  # the runs are deterministic: the largest difference seen is 0


@contextlib.contextmanager
def _fits(stop_fit=None, stop_epoch=None, seen=None):
    """Patch ``training.fit_model``: Ctrl-C at the end of 0-based ``stop_epoch`` of fit
    number ``stop_fit`` (before its backup); record ``(fit, epoch)`` of every epoch begun."""
    real = training.fit_model

    def fit_model(model, x, y=None, *, callbacks=None, **kwargs):
        number = current_context().fits + 1
        extra = []
        if seen is not None:
            extra.append(keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda e, logs: seen.append((number, e))))
        if number == stop_fit:
            def stop(epoch, logs):
                if epoch == stop_epoch:
                    raise KeyboardInterrupt

            extra.append(keras.callbacks.LambdaCallback(on_epoch_end=stop))
        return real(model, x, y, callbacks=[*(callbacks or []), *extra], **kwargs)

    training.fit_model = fit_model
    try:
        yield
    finally:
        training.fit_model = real


def _weights(result):
    model = result[0] if isinstance(result, tuple) else result
    return [np.asarray(w) for w in model.weights]


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g == 0, w == 0)  # the masks (pruned weights) agree
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL)


def resumed_equals_uninterrupted(tmp_path, run, stop_fit, stop_epoch, fits_before=()):
    """Run ``run()`` uninterrupted, then interrupted at (``stop_fit``, ``stop_epoch``),
    then resumed; assert the resumed result equals the uninterrupted one and that the
    interrupted fit resumed at ``stop_epoch`` instead of starting over."""
    ck = tmp_path / "ck"
    training.set_seed(0)
    with TrainingContext():  # a plain run, without --checkpoint-dir
        want = _weights(run())
    training.set_seed(0)
    with pytest.raises(KeyboardInterrupt), _fits(stop_fit, stop_epoch), \
            TrainingContext(checkpoint_dir=ck):
        run()
    meta = json.loads((ck / f"fit{stop_fit}" / "training_metadata.json").read_text())
    assert meta["epoch"] == stop_epoch, "the backup holds the epochs finished before Ctrl-C"
    seen = []
    training.set_seed(0)
    with _fits(seen=seen), TrainingContext(checkpoint_dir=ck):
        got = _weights(run())
    first = min(e for f, e in seen if f == stop_fit)
    assert first == stop_epoch, f"fit {stop_fit} resumed at epoch {first}, not {stop_epoch}"
    assert not any(ck.iterdir()), "finished fits drop their backups"
    _assert_same(got, want)
    return got


@pytest.fixture(scope="module")
def mlp(mlp_file):
    return keras.models.load_model(mlp_file[0]), mlp_file[1]


# -- every training command -----------------------------------------------------------------
@pytest.mark.parametrize("options", [
    # the fine-tune keeps the best epoch (EarlyStopping) under a cosine rate (CosineSchedule)
    {"schedule": "oneshot", "epochs": 3, "restore_best": True, "cosine": True},
    {"schedule": "gradual", "epochs": 3, "frequency": 5},
    {"schedule": "iterative", "epochs": 4, "rounds": 2},
], ids=["oneshot", "gradual", "iterative"])
def test_prune_resumes_to_the_same_model(tmp_path, mlp, options):
    from compress.pruning import prune

    model, ds = mlp
    iterative = options["schedule"] == "iterative"
    got = resumed_equals_uninterrupted(
        tmp_path, lambda: prune(model, ds, sparsity=0.8, **options),
        stop_fit=2 if iterative else 1, stop_epoch=1)
    kernels = [w for w in got if w.ndim == 2]
    zero = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zero == pytest.approx(0.8, abs=0.01)


def test_prune_with_distillation_resumes_to_the_same_model(tmp_path, mlp):
    from compress.pruning import prune

    model, ds = mlp
    resumed_equals_uninterrupted(
        tmp_path, lambda: prune(model, ds, sparsity=0.5, epochs=3, distill=True),
        stop_fit=1, stop_epoch=1)


@pytest.mark.parametrize("options", [
    {"method": "hash", "dropout": 0.3},  # dropout: the random states are in the backup
    {"method": "kmeans", "clusters": 4},
], ids=["hash", "kmeans"])
def test_share_resumes_to_the_same_model(tmp_path, mlp, options):
    from compress.sharing import share

    model, ds = mlp
    resumed_equals_uninterrupted(tmp_path, lambda: share(model, ds, epochs=3, **options),
                                 stop_fit=1, stop_epoch=1)


def test_distill_resumes_to_the_same_student(tmp_path, mlp):
    from compress.distillation import distill_step

    teacher, ds = mlp
    resumed_equals_uninterrupted(
        tmp_path, lambda: distill_step(teacher, ds, width=0.5, epochs=3, baseline=False),
        stop_fit=1, stop_epoch=1)


def test_cascade_resumes_to_the_same_model(tmp_path, mlp):
    from compress.cascade import cascade_train

    model, ds = mlp
    # one stage per hidden layer (fit1, fit2), each with a PlateauSchedule
    resumed_equals_uninterrupted(tmp_path, lambda: cascade_train(model, ds, epochs=2, k=0),
                                 stop_fit=2, stop_epoch=1)


def test_quantization_aware_training_resumes_to_the_same_model(tmp_path, mlp):
    from compress.quantization.qat import qat_finetune

    model, ds = mlp
    resumed_equals_uninterrupted(tmp_path, lambda: qat_finetune(model, ds, epochs=3),
                                 stop_fit=1, stop_epoch=1)


# -- what makes them equal --------------------------------------------------------------------
def _tiny(seed=0):
    training.set_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)


def test_each_epoch_has_its_own_order_and_a_resumed_fit_sees_the_same_orders():
    from compress.training import epoch_shuffled

    x = np.arange(10, dtype="float32")[:, None]

    def orders(start):
        data, steps = epoch_shuffled(x, x, batch_size=4, epochs=4, start=start, seed=3)
        batches = [b[0].numpy().ravel() for b in data]
        assert steps == 3 and len(batches) == 3 * (4 - start)
        return [np.concatenate(batches[i:i + 3]).tolist() for i in range(0, len(batches), 3)]

    whole = orders(0)
    assert all(sorted(o) == list(range(10)) for o in whole)  # each epoch sees every sample once
    assert len({tuple(o) for o in whole}) == 4, "every epoch is shuffled anew"
    assert orders(2) == whole[2:]


def test_a_fit_reshuffles_every_epoch():
    """Keras's own shuffle, under set_seed, gave every epoch the same order."""
    model, x, y = _tiny()
    x = np.arange(len(x), dtype="float32")[:, None] * np.ones((1, 4), "float32")
    firsts = []
    real_step = model.train_step

    def train_step(data):
        firsts.append(data[0][:, 0])
        return real_step(data)

    model.train_step = train_step
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy",
                  run_eagerly=True)
    training.fit_model(model, x, y, epochs=3, batch_size=len(x), verbose=0)
    orders = [tuple(np.asarray(f).astype(int)) for f in firsts]
    assert len(orders) == 3 and len(set(orders)) == 3


class _Score(keras.callbacks.Callback):
    """Puts a made-up monitored value in the logs: ``values[epoch]``."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]


def _interrupted_then_resumed(tmp_path, make_callbacks, epochs=4, stop_epoch=2):
    """The tiny model fit uninterrupted, then interrupted and resumed: both models."""
    results = []
    for interrupted in (False, True):
        model, x, y = _tiny()
        ck = tmp_path / f"ck{interrupted}"
        if interrupted:
            with pytest.raises(KeyboardInterrupt), _fits(1, stop_epoch), \
                    TrainingContext(checkpoint_dir=ck):
                training.fit_model(model, x, y, epochs=epochs, batch_size=8, verbose=0,
                                   callbacks=make_callbacks())
            model, x, y = _tiny()
        callbacks = make_callbacks()
        with TrainingContext(checkpoint_dir=ck):
            training.fit_model(model, x, y, epochs=epochs, batch_size=8, verbose=0,
                               callbacks=callbacks)
        results.append((model, callbacks))
    return results


def test_early_stopping_keeps_its_best_epoch_across_a_resume(tmp_path):
    from compress.callbacks import EarlyStopping

    # the best score is at epoch 0, before the interruption at epoch 2
    (whole, (_, stop_a)), (resumed, (_, stop_b)) = _interrupted_then_resumed(
        tmp_path, lambda: [_Score([5.0, 1.0, 2.0, 3.0]),
                           EarlyStopping(monitor="score", mode="max", patience=10)])
    assert stop_a.best_epoch == stop_b.best_epoch == 0 and stop_b.best == 5.0
    _assert_same(_weights(resumed), _weights(whole))


def test_a_plateau_reduction_of_a_cosine_survives_a_resume(tmp_path):
    from compress.callbacks import CosineSchedule, PlateauSchedule

    # the score never improves after epoch 0: the cosine's peak is cut at epoch 1
    (whole, (_, cos_a, pl_a)), (resumed, (_, cos_b, pl_b)) = _interrupted_then_resumed(
        tmp_path, lambda: [_Score([1.0, 0.5, 0.5, 0.5]), CosineSchedule(peak_lr=0.1),
                           PlateauSchedule(monitor="score", mode="max", patience=1,
                                           cooldown=5)])
    assert cos_a.scale == cos_b.scale == pytest.approx(0.1)
    assert pl_a.reductions == pl_b.reductions == [(1, pytest.approx(0.01))]
    assert float(resumed.optimizer.learning_rate) == float(whole.optimizer.learning_rate)
    _assert_same(_weights(resumed), _weights(whole))


def test_quantization_aware_training_of_a_cnn_resumes_to_the_same_model(tmp_path, cnn_file):
    """QAT's Conv2D twin kept only its kernel and bias in a backup (Keras's convolution
    saves those two), which then did not load back ("expected 5 variables"): a resumed
    QAT run of any convolutional network crashed."""
    from compress.quantization.qat import qat_finetune

    model, ds = keras.models.load_model(cnn_file[0]), cnn_file[1]
    resumed_equals_uninterrupted(tmp_path, lambda: qat_finetune(model, ds, epochs=2),
                                 stop_fit=1, stop_epoch=1)
