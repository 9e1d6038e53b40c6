"""Shared fixtures: tiny real models saved to files, small real data, a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits (8x8), seeded split; small enough for unit tests."""
    from compress.data import load_data

    return load_data("digits", seed=0)


def _seeded():
    """Seed before a session fixture builds its model: its initial weights (and so every
    test that uses it) must not depend on which tests ran earlier in the same worker."""
    from compress import training

    training.set_seed(0)


def _train_small(model, ds, epochs=3):
    from compress import training

    training.set_seed(0)
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=epochs, verbose=0, batch_size=64)
    return model


@pytest.fixture(scope="session")
def mlp_file(tmp_path_factory, digits):
    """A small trained MLP on digits, saved as .keras: (path, prepared dataset)."""
    import keras

    from compress.data import prepare

    _seeded()
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(16, activation="relu", name="fc2"),
        keras.layers.Dense(10, activation="softmax", name="predictions")], name="mlp")
    ds = prepare(model, digits)
    _train_small(model, ds)
    path = tmp_path_factory.mktemp("models") / "mlp.keras"
    model.save(path)
    return path, ds


@pytest.fixture(scope="session")
def cnn_file(tmp_path_factory, digits):
    """A small trained CNN with BatchNorm on digits, saved as .h5: (path, dataset)."""
    import keras

    from compress.data import prepare

    _seeded()
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
        keras.layers.BatchNormalization(name="bn1"), keras.layers.ReLU(name="relu1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(10, activation="softmax", name="predictions")], name="cnn")
    ds = prepare(model, digits)
    _train_small(model, ds)
    path = tmp_path_factory.mktemp("models") / "cnn.h5"
    model.save(path)
    return path, ds


def file_digest(path) -> str:
    """SHA-256 of a file: tests check inputs are untouched."""
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def cli():
    """Run the CLI in-process: ``cli("inspect", path)`` -> click Result (exit_code, output)."""
    from click.testing import CliRunner

    from compress.cli import main

    def run(*args):
        runner = CliRunner()
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


# The files that take longest (seconds under `make test`'s load, measured on 2026-11-29 with
# the quick bench cut to the harness cases), longest first.
# `make test` distributes whole files over 2 workers in collection order
# (`--dist loadfile --no-loadscope-reorder`): starting the long ones first keeps one
# worker from running a long file alone at the end. Other files follow in their order.
LONGEST_FIRST = (
    "test_multiworker.py", "test_decoder_lms.py", "test_interrupt_resume.py",
    "test_quantization_qat.py", "test_bench.py", "test_recipes.py", "test_export.py",
    "test_kerashub.py", "test_zoo.py", "test_notebooks.py", "test_resume_equality.py",
    "test_text_inputs.py", "test_tasks.py", "test_quantization_keras_int8.py",
    "test_cli.py", "test_review_quant.py", "test_data_sources.py", "test_distillation.py",
    "test_sharing_hashing.py", "test_keep_float_auto.py", "test_reliability.py",
    "test_quantization_tflite.py", "test_cascade_pass.py", "test_dense_prediction.py",
    "test_pruning_obs.py", "test_runtime.py", "test_multi_io.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the files longest first (a stable sort: tests keep their order in a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
