"""The Pruning callback inside a user's own model.fit."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress.callbacks import Pruning
from compress.errors import CompressError


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(32, activation="relu", name="fc1"),
                          keras.layers.Dense(10, activation="softmax", name="out")])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def test_polynomial_schedule_values():
    cb = Pruning(sparsity=0.8, initial_sparsity=0.0, begin_step=10, end_step=110, power=3)
    assert cb.target_sparsity(5) == 0.0
    assert cb.target_sparsity(10) == pytest.approx(0.0)
    assert cb.target_sparsity(60) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert cb.target_sparsity(500) == pytest.approx(0.8)
    assert Pruning(sparsity=0.5, schedule="constant").target_sparsity(0) == 0.5


def test_fit_with_callback_reaches_sparsity_and_yields_plain_model(digits, tmp_path):
    from compress.data import prepare

    model = _model()
    ds = prepare(model, digits)
    model.fit(ds.x_train, ds.y_train, epochs=2, batch_size=64, verbose=0)  # traced before
    cb = Pruning(sparsity=0.9, frequency=4, end_step=30)
    hist = model.fit(ds.x_train, ds.y_train, epochs=3, batch_size=64, verbose=0,
                     callbacks=[cb])
    assert len(cb.updates) >= 3
    sparsities = [s for _, s in cb.updates]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.9)
    for name in ("fc1", "out"):
        k = model.get_layer(name).kernel.numpy()
        assert abs((k == 0).sum() - 0.9 * k.size) <= 1
    assert hist.history["accuracy"][-1] > 0.5
    assert all(w.constraint is None for w in model.weights)
    path = tmp_path / "m.keras"
    model.save(path)
    keras.models.load_model(path)
    assert cb.get_config()["sparsity"] == 0.9


def test_bad_arguments_get_the_schema_message():
    from compress.callbacks.pruning import PRUNING_CALLBACK_OPTIONS

    with pytest.raises(CompressError) as refused:
        Pruning(sparsity=1.5)
    assert str(refused.value) == "Pruning.sparsity: must be in [0.0, 1.0), got 1.5"
    with pytest.raises(CompressError) as by_schema:
        PRUNING_CALLBACK_OPTIONS.validate({"sparsity": 1.5})
    assert str(by_schema.value) == str(refused.value)
    with pytest.raises(CompressError, match=r"^Pruning.sparsity: must be in \[0.0, 1.0\)"):
        Pruning(sparsity=1.0)
    with pytest.raises(CompressError, match="Pruning.calibration: method 'obd' needs"):
        Pruning(method="obd")
    with pytest.raises(CompressError, match="Pruning.damping: must be >= 0.0, got -1.0"):
        Pruning(method="obd", calibration=([0], [0]), damping=-1.0)
    with pytest.raises(CompressError, match="Pruning.initial_sparsity: must be <= sparsity"):
        Pruning(sparsity=0.5, initial_sparsity=0.6)
    with pytest.raises(CompressError, match="Pruning.scope: must be one of layer, global"):
        Pruning(scope="sensitivity")  # the pass's per-layer measurement is not a callback's
    with pytest.raises(CompressError, match="Pruning.frequency: must be an integer"):
        Pruning(frequency="often")


def test_arguments_are_coerced_like_pass_options_and_config_round_trips():
    cb = Pruning(sparsity=1 / 2, frequency=10.0, layers="fc.*", block=2)
    assert cb.frequency == 10 and isinstance(cb.frequency, int)
    assert cb.layers == ["fc.*"]  # one entry, as a recipe's `layers: "fc.*"`
    config = cb.get_config()
    assert Pruning(**config).get_config() == config
    assert config["sparsity"] == 0.5 and config["seed"] == 0 and config["block"] == 2


def test_balanced_callback_prunes_every_unit_equally(digits):
    from compress.data import prepare

    model = _model()
    ds = prepare(model, digits)
    cb = Pruning(sparsity=0.75, frequency=3, end_step=12, balance=True)
    model.fit(ds.x_train, ds.y_train, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    for name in ("fc1", "out"):
        fan_in = (model.get_layer(name).kernel.numpy() != 0).sum(axis=0)
        assert fan_in.min() == fan_in.max() > 0
    assert cb.get_config()["balance"] is True and cb.get_config()["damping"] == 0.0


def test_block_callback_prunes_runs_of_inputs(digits):
    from compress.data import prepare

    model = _model()
    ds = prepare(model, digits)
    cb = Pruning(sparsity=0.75, frequency=3, end_step=12, block=4)
    model.fit(ds.x_train, ds.y_train, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
    k = model.get_layer("fc1").kernel.numpy()  # (64, 32): 16 blocks of 4 inputs per unit
    nonzero = (k.reshape(16, 4, 32) != 0)
    assert (nonzero.all(axis=1) | ~nonzero.any(axis=1)).all()
    assert abs((k == 0).mean() - 0.75) < 0.01
    assert cb.get_config()["block"] == 4
    with pytest.raises(CompressError, match="block"):
        Pruning(block=0)


def _interrupt_at_epoch(epoch):
    """Ctrl-C as epoch ``epoch`` (0-based) begins: the epochs before it are backed up."""
    def stop(e, logs=None):
        if e == epoch:
            raise KeyboardInterrupt

    return keras.callbacks.LambdaCallback(on_epoch_begin=stop)


def test_a_resumed_fit_keeps_the_schedule_and_its_masks(digits, tmp_path):
    """Interrupted after 3 of 4 epochs and resumed, the schedule ends as if never stopped.

    Without its state in the backup the resumed callback started again at step 0 with no
    masks: 21 steps of a 56-step schedule, an under-pruned model.
    """
    from compress import training
    from compress.data import prepare
    from compress.training_context import TrainingContext

    def run(*extra):
        training.set_seed(0)
        model = _model()
        ds = prepare(model, digits)
        cb = Pruning(sparsity=0.9, frequency=5)
        training.fit_model(model, ds.x_train, ds.y_train, epochs=4, batch_size=64, verbose=0,
                           callbacks=[cb, *extra])
        return model, cb

    whole, whole_cb = run()
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt), TrainingContext(checkpoint_dir=ck):
        run(_interrupt_at_epoch(3))
    assert (ck / "fit1" / "callbacks_state.npz").exists()
    with TrainingContext(checkpoint_dir=ck):
        resumed, resumed_cb = run()
    assert len(whole_cb.updates) >= 9
    assert resumed_cb.updates == whole_cb.updates
    assert resumed_cb.step == whole_cb.step == 4 * 21
    for name in ("fc1", "out"):
        k = resumed.get_layer(name).kernel.numpy()
        assert abs((k == 0).sum() - 0.9 * k.size) <= 1
        np.testing.assert_array_equal(k == 0, whole.get_layer(name).kernel.numpy() == 0)
    assert all(w.constraint is None for w in resumed.weights)
    assert not any(ck.iterdir())  # the finished fit dropped its backup


def test_keras_backup_and_restore_resume_keeps_the_zeros_and_the_schedule(digits, tmp_path):
    # Keras's own BackupAndRestore (not the toolkit's) saves no callback state: the resumed
    # callback started its schedule again at step 0 with masks of ones, and the restored
    # zeros grew back (0.9 asked, 0.11 reached).
    from compress.data import prepare

    def run(*extra):
        keras.utils.set_random_seed(0)
        model = _model()
        ds = prepare(model, digits)
        cb = Pruning(sparsity=0.9, frequency=5)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "bk"))
        model.fit(ds.x_train, ds.y_train, epochs=4, batch_size=64, verbose=0,
                  callbacks=[backup, cb, *extra])
        return model, cb

    with pytest.raises(KeyboardInterrupt):
        run(_interrupt_at_epoch(2))
    resumed, cb = run()
    assert cb.step == 4 * 21 and cb.current == pytest.approx(0.9)
    for name in ("fc1", "out"):
        k = resumed.get_layer(name).kernel.numpy()
        assert abs((k == 0).sum() - 0.9 * k.size) <= 1


def test_an_early_stop_before_the_schedule_ends_is_said(digits):
    from compress.callbacks import EarlyStopping
    from compress.callbacks.pruning import UnderPrunedWarning
    from compress.data import prepare

    model = _model()
    ds = prepare(model, digits)
    stop = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: setattr(model, "stop_training", e == 0))
    with pytest.warns(UnderPrunedWarning, match="before the schedule reached sparsity 0.9"):
        model.fit(ds.x_train, ds.y_train, epochs=6, batch_size=64, verbose=0,
                  callbacks=[Pruning(sparsity=0.9, frequency=5), stop])
    assert 0 < (model.get_layer("fc1").kernel.numpy() == 0).mean() < 0.9
    assert EarlyStopping  # the README's pairing; its restore keeps the masks (tested above)


def test_a_layers_own_constraint_is_kept_under_the_mask_and_given_back(digits):
    from compress.data import prepare
    from compress.pruning import prune

    def nonneg_model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu", name="fc1",
                                                 kernel_constraint="non_neg"),
                              keras.layers.Dense(10, activation="softmax", name="out")])
        m.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    model = nonneg_model()
    ds = prepare(model, digits)
    model.fit(ds.x_train, ds.y_train, epochs=2, batch_size=64, verbose=0,
              callbacks=[Pruning(sparsity=0.5, frequency=5, end_step=20)])
    kernel = model.get_layer("fc1").kernel
    assert (kernel.numpy() >= 0).all() and (kernel.numpy() == 0).mean() >= 0.5
    assert isinstance(kernel.constraint, keras.constraints.NonNeg)  # given back
    pruned, _ = prune(nonneg_model(), ds, sparsity=0.5, epochs=1)
    kernel = pruned.get_layer("fc1").kernel
    assert (kernel.numpy() >= 0).all()
    assert isinstance(kernel.constraint, keras.constraints.NonNeg)


def test_a_ramp_shorter_than_two_updates_is_not_one_shot_in_disguise():
    """10 epochs of 19 steps and the default frequency of 100: 0% until step 100, then
    89% at once. The masks now follow the ramp, and a warning names the frequency."""
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(600, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    cb = Pruning(sparsity=0.9)
    with pytest.warns(UserWarning, match="masks are updated every 15 steps instead"):
        model.fit(x, y, epochs=10, batch_size=32, callbacks=[cb], verbose=0)
    assert cb.end_step == 126 and len(cb.updates) >= 8
    steps = [s for s, _ in cb.updates]
    assert steps[0] == 15 and steps[-1] == 126  # step 0 schedules 0%: nothing to do
    assert all(b > a for (_, a), (_, b) in zip(cb.updates, cb.updates[1:]))  # a ramp
