"""EarlyStopping (Algorithm 7.1) agrees with Keras's and adds i*, restore at the epoch limit,
evaluation-counted patience, and the Algorithm 7.2 retrain helper."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress.callbacks.early_stopping import EarlyStopping, retrain_on_all_data
from compress.errors import CompressError


def _mlp(seed=0, lr=3e-3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def arrays(digits):
    flat = lambda x: x.reshape(len(x), -1)
    return flat(digits.x_train), digits.y_train, flat(digits.x_val), digits.y_val


class _Fake:
    """Stands for a model in replayed histories: weights are the epoch number."""

    def __init__(self):
        self.stop_training = False
        self.weights_now = [np.zeros(1)]
        self.optimizer = None
        self.metrics = []

    def get_weights(self):
        return [w.copy() for w in self.weights_now]

    def set_weights(self, w):
        self.weights_now = w


def _replay(cb, values):
    fake = _Fake()
    cb.set_model(fake)
    cb.on_train_begin()
    for epoch, v in enumerate(values):
        fake.weights_now = [np.array([float(epoch)])]
        cb.on_epoch_end(epoch, {"val_loss": v})
        if fake.stop_training:
            break
    cb.on_train_end()
    return epoch, fake.weights_now[0][0]


HISTORIES = [
    [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.4],
    [1.0, 0.8, 0.7, 0.71, 0.69, 0.695, 0.7, 0.72, 0.73],
    [0.5, 0.6, 0.7, 0.8],
    [1.0, 0.99995, 0.9999, 0.99985, 0.9, 0.8],
]


@pytest.mark.parametrize("patience,min_delta", [(0, 0.0), (1, 0.0), (2, 0.0), (2, 1e-3)])
@pytest.mark.parametrize("history", HISTORIES)
def test_same_stopping_epoch_and_best_as_keras(history, patience, min_delta):
    ours = EarlyStopping(patience=patience, min_delta=min_delta, restore_best_weights=True)
    theirs = keras.callbacks.EarlyStopping(patience=patience, min_delta=min_delta,
                                           restore_best_weights=True)
    ours_stop, ours_w = _replay(ours, history)
    keras_stop, keras_w = _replay(theirs, history)
    assert ours_stop == keras_stop
    assert ours_w == keras_w == ours.best_epoch
    assert ours.best == theirs.best and ours.best_epoch == theirs.best_epoch


def test_same_stopping_epoch_as_keras_in_real_fit(arrays):
    x, y, xv, yv = arrays
    runs = []
    for cls in (EarlyStopping, keras.callbacks.EarlyStopping):
        model = _mlp(lr=3e-2)  # a fast learner, so validation loss plateaus within the run
        keras.utils.set_random_seed(1)
        cb = cls(monitor="val_loss", patience=0, min_delta=0.02, restore_best_weights=True)
        hist = model.fit(x, y, validation_data=(xv, yv), epochs=20, batch_size=128,
                         callbacks=[cb], verbose=0, shuffle=False)
        runs.append((len(hist.history["loss"]), cb.best_epoch, model.get_weights()))
    assert runs[0][0] == runs[1][0] < 20
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][2], runs[1][2]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_restore_recovers_best_validation_epoch_exactly_at_epoch_limit(arrays):
    x, y, xv, yv = arrays
    model = _mlp(lr=3e-2)
    snapshots = []
    snap = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: snapshots.append((logs["val_loss"], model.get_weights())))
    # patience larger than the run: the epoch limit ends training, not the callback
    stop = EarlyStopping(patience=100, restore_best_weights=True)
    keras.utils.set_random_seed(2)
    hist = model.fit(x, y, validation_data=(xv, yv), epochs=12, batch_size=64,
                     callbacks=[snap, stop], verbose=0)
    losses = hist.history["val_loss"]
    best = int(np.argmin(losses))
    assert stop.best_epoch == best and stop.stopped_epoch == 0
    assert best < 11, "the test needs a run whose last epoch is not its best"
    for got, want in zip(model.get_weights(), snapshots[best][1]):
        np.testing.assert_array_equal(got, want)
    val_loss_now = model.evaluate(xv, yv, verbose=0)[0]
    assert val_loss_now == pytest.approx(losses[best], rel=1e-5)
    # i* and best value are in the history
    steps_per_epoch = int(np.ceil(len(x) / 64))
    assert stop.best_step == (best + 1) * steps_per_epoch
    assert hist.history["best_epoch"][-1] == best
    assert hist.history["best_val_loss"][-1] == pytest.approx(losses[best])
    assert hist.history["best_step"][-1] == stop.best_step


def test_patience_counts_evaluations_not_epochs(arrays):
    x, y, xv, yv = arrays
    model = _mlp(lr=0.3)
    stop = EarlyStopping(patience=2)
    hist = model.fit(x, y, validation_data=(xv, yv), validation_freq=3, epochs=60,
                     batch_size=256, callbacks=[stop], verbose=0)
    epochs_run = len(hist.history["loss"])
    assert stop.evaluations == len(hist.history["val_loss"])
    assert epochs_run % 3 == 0 and epochs_run < 60
    # patience 2: at least 3 evaluations (best, then 2 without improvement)
    assert stop.evaluations >= 3
    assert stop.best_epoch % 3 == 2  # the best is an evaluation epoch


def test_a_monitor_the_fit_never_logs_is_said_once(arrays):
    # Keras's own callback warns; ours returned quietly: a typo (val_acc) or no
    # validation data, and the fit ran every epoch with nothing restored, unsaid.
    x, y, xv, yv = arrays
    for monitor, validation in (("val_acc", (xv, yv)), ("val_loss", None)):
        model = _mlp()
        with pytest.warns(UserWarning, match=f"EarlyStopping: '{monitor}'") as seen:
            model.fit(x, y, validation_data=validation, epochs=3, batch_size=256, verbose=0,
                      callbacks=[EarlyStopping(monitor=monitor, patience=1, mode="max")])
        assert len([w for w in seen if "EarlyStopping" in str(w.message)]) == 1
    import warnings

    with warnings.catch_warnings(record=True) as seen:  # a monitor the fit logs: nothing
        warnings.simplefilter("always")
        _mlp().fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=256, verbose=0,
                   callbacks=[EarlyStopping(monitor="val_accuracy", patience=1)])
    assert not [w for w in seen if "EarlyStopping" in str(w.message)]


def test_retrain_on_all_data_runs_exactly_i_star_steps(arrays):
    x, y, xv, yv = arrays
    model = _mlp()
    stop = EarlyStopping(patience=1)
    model.fit(x, y, validation_data=(xv, yv), epochs=4, batch_size=128, callbacks=[stop],
              verbose=0)
    before = [w.copy() for w in model.get_weights()]
    final = retrain_on_all_data(model, (x, y), (xv, yv), stop, batch_size=64, seed=3)
    assert int(final.optimizer.iterations) == stop.best_step > 0
    assert final is not model
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)  # input untouched
    acc = float(np.mean(np.argmax(final.predict(xv, verbose=0), -1) == yv))
    assert acc > 0.3  # trained: an untrained 10-class model scores about 0.1
    by_epochs = retrain_on_all_data(model, (x, y), (xv, yv), stop.best_step, mode="epochs",
                                    batch_size=64)
    steps_per_epoch_all = int(np.ceil((len(x) + len(xv)) / 64))
    epochs = int(np.ceil(stop.best_step / np.ceil(len(x) / 64)))
    assert int(by_epochs.optimizer.iterations) == epochs * steps_per_epoch_all


def test_retrain_refuses_bad_input(arrays):
    x, y, xv, yv = arrays
    model = _mlp()
    with pytest.raises(CompressError, match="steps must be > 0"):
        retrain_on_all_data(model, (x, y), (xv, yv), 0)
    raw = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(CompressError, match="compiled"):
        retrain_on_all_data(raw, (x, y), (xv, yv), 5)


def test_get_config_round_trip():
    cb = EarlyStopping(monitor="val_accuracy", patience=4, min_delta=0.01, mode="max")
    again = EarlyStopping.from_config(cb.get_config())
    assert again.get_config() == cb.get_config()
    assert again.patience == 4 and again.monitor == "val_accuracy"
