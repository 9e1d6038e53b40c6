"""CSV tables as data (``--data PATH.csv --label-column NAME``): the columns go to a model's
inputs of the same names, or side by side as a one-input model's features; labels are
class numbers or regression targets; every fault is one line naming the column or line.

Before: ``--data table.csv`` was "not a dataset"; a user had to convert the table to an
``.npz`` by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.data import Columns, load_data
from compress.errors import CompressError


def _digits_csv(path, digits, order=None):
    """The digits dataset's splits as one CSV table: 64 pixel columns, then 'label'."""
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test]).reshape(-1, 64)
    y = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    names = [f"p{i}" for i in range(64)]
    cols = list(range(64)) if order is None else order
    lines = [",".join([names[i] for i in cols] + ["label"])]
    lines += [",".join([f"{row[i]:.4f}" for i in cols] + [str(int(t))]) for row, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _accuracy(path, digits) -> float:
    import keras

    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])
    y = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    pred = keras.models.load_model(path).predict(x, verbose=0)
    return float(np.mean(np.argmax(pred, -1) == y))


def test_a_one_input_model_takes_the_numeric_columns_in_file_order(cli, mlp_file, digits,
                                                                    tmp_path):
    path, _ = mlp_file
    table = _digits_csv(tmp_path / "digits.csv", digits)
    result = cli("prune", path, "-o", tmp_path / "p.keras", "--data", table, "--label-column",
                 "label", "--sparsity", "0.5", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    # the pixels reached the model in their order: it scores on the table's test rows as
    # on the digits it was trained on (another split of the same 1,797 images)
    whole = _accuracy(path, digits)
    assert info["before"]["accuracy"] == pytest.approx(whole, abs=0.06)
    assert f"data csv:{table}: 1797 rows; 64 input columns (64 number); class numbers 0 to " \
        "9; the 64 columns (p0, p1, p2, ... p63) are the features of input 'input_layer" \
        in result.stderr and "in the file's order" in result.stderr
    # the same table with its columns shuffled is read, and the model sees shuffled pixels
    shuffled = _digits_csv(tmp_path / "shuffled.csv", digits,
                           order=list(np.random.default_rng(0).permutation(64)))
    result = cli("inspect", path, "--data", shuffled, "--label-column", "label", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] < whole - 0.3


def _tabular(tmp_path):
    """A keras.io-style tabular classifier: one input per column, a StringLookup on zip
    codes (digits with leading zeros: text to the model), and its rows as a CSV whose
    columns are in another order than the inputs."""
    import keras
    import tensorflow as tf
    from keras import layers

    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    n = 400
    zips = rng.choice(["02139", "00501", "10001", "02140"], size=n)
    age = rng.normal(40, 12, size=n).round(1)
    y = (np.isin(zips, ["02139", "00501"]) ^ (age > 45)).astype("int64")
    lookup = layers.StringLookup(output_mode="one_hot", name="zip_lookup")
    lookup.adapt(zips[:, None])
    norm = layers.Normalization(name="age_norm")
    norm.adapt(age[:, None].astype("float32"))
    zi, ai = keras.Input((1,), dtype="string", name="zip"), keras.Input((1,), name="age")
    h = layers.Concatenate()([layers.Flatten()(lookup(zi)), norm(ai)])
    h = layers.Dense(32, activation="relu", name="hidden")(h)
    model = keras.Model({"zip": zi, "age": ai},
                        layers.Dense(2, activation="softmax", name="out")(h), name="tab")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit({"zip": tf.constant(zips[:, None]), "age": age[:, None].astype("float32")}, y,
              epochs=40, verbose=0)
    path = tmp_path / "tab.keras"
    model.save(path)
    table = tmp_path / "tab.csv"
    table.write_text("y;age;zip\n" + "".join(f"{t};{a};{z}\n" for t, a, z in
                                              zip(y, age, zips)))
    return path, table


def test_a_tabular_model_takes_each_column_by_its_input_name(cli, tmp_path):
    path, table = _tabular(tmp_path)
    out = tmp_path / "pruned.keras"
    result = cli("prune", path, "-o", out, "--data", table, "--label-column", "y",
                 "--sparsity", "0.3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    # each input got its own column, and the zip codes reached the lookup as the text
    # they are in the file ("00501", not the number 501)
    assert info["before"]["accuracy"] > 0.9
    assert "2 input columns (2 number); class numbers 0 to 1; each of the model's inputs " \
        "takes the column of its name (age, zip)" in result.stderr
    # a column no input takes is refused in one line, and nothing is written
    extra = tmp_path / "extra.csv"
    lines = table.read_text().splitlines()
    extra.write_text("\n".join([lines[0] + ";id"] + [f"{row};{i}" for i, row in
                                                     enumerate(lines[1:])]) + "\n")
    result = cli("prune", path, "-o", tmp_path / "x.keras", "--data", extra,
                 "--label-column", "y", "--sparsity", "0.3")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: csv:{extra}: column(s) 'id' match no input of model 'tab' (inputs: age, "
        "zip; columns: age, zip, id); leave them out of the file")
    assert not (tmp_path / "x.keras").exists()


def test_whole_number_targets_of_a_regressor_are_regression_targets(cli, tmp_path):
    """A price in dollars is a whole number; the file cannot say it is not a class number
    (it was refused: "labels go up to 261000 but the model has only 1 outputs")."""
    import keras

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(300, 3)).astype("float32")
    price = np.round(250_000 + 20_000 * x @ np.array([1.0, -0.5, 0.25])).astype("int64")
    inp = keras.Input((1,), name="rooms")  # one input named after a column: that column
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(inp), name="one")
    model.compile("adam", "mse")
    model.save(tmp_path / "one.keras")
    (tmp_path / "one.csv").write_text("rooms,price\n" + "".join(
        f"{r},{p}\n" for r, p in zip(rng.integers(1, 6, 300), price)))
    result = cli("inspect", tmp_path / "one.keras", "--data", tmp_path / "one.csv",
                 "--label-column", "price", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mse"] > 0 and "accuracy" not in info  # scored as the regression it is
    assert "1 input column (1 number); regression targets; each of the model's" in \
        result.stderr
    # a one-input regressor on three feature columns, side by side
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="reg")
    model.compile("adam", "mse")
    model.save(tmp_path / "reg.keras")
    (tmp_path / "reg.csv").write_text("a,b,c,price\n" + "".join(
        f"{a:.4f},{b:.4f},{c:.4f},{p}\n" for (a, b, c), p in zip(x, price)))
    result = cli("inspect", tmp_path / "reg.keras", "--data", tmp_path / "reg.csv",
                 "--label-column", "price", "--json")
    assert result.exit_code == 0, result.output
    assert "mse" in json.loads(result.stdout)
    assert "the 3 columns (a, b, c) are the features of input" in result.stderr
    # without --label-column the target is a fourth feature: the refusal names the columns
    # (it said only "samples of shape (4,) (4 values) do not fit model input (3,)")
    result = cli("inspect", tmp_path / "reg.keras", "--data", tmp_path / "reg.csv")
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        "do not fit model input (3,) (3 values): the features are the columns a, b, c, "
        "price; --label-column names the target and every other column is a feature"), \
        result.output


def test_an_integer_input_takes_whole_numbers_only():
    import keras

    from compress.data.arrays import fit_to_model

    inp = keras.Input((1,), dtype="int64", name="n")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.ops.cast(inp, "float32")))
    got = fit_to_model(Columns({"n": np.array(["3", "12"])}, numeric=["n"]), model)
    assert got.dtype == np.int64 and got[:, 0].tolist() == [3, 12]
    with pytest.raises(CompressError, match="column 'n' holds 2.5, but its input takes "
                                            "whole numbers"):
        fit_to_model(Columns({"n": np.array(["3", "2.5"])}, numeric=["n"]), model)
    with pytest.raises(CompressError, match="column 'n' holds text, but input 'n' takes"):
        fit_to_model(Columns({"n": np.array(["3", "x"])}), model)


def test_a_text_column_for_a_numeric_input_and_a_missing_label_are_one_line(
        cli, mlp_file, tmp_path):
    path, _ = mlp_file
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},x{i},{i % 2}\n" for i in range(20)))
    for args, message in (
            (["--label-column", "label"], "column 'b' holds text, but the one input 'input_layer"),
            (["--label-column", "nope"], "no column 'nope' (columns: a, b, label)")):
        result = cli("prune", path, "-o", tmp_path / "p.keras", "--data", table, *args,
                     "--sparsity", "0.5")
        assert result.exit_code == 1, result.output
        assert message in result.output.strip().splitlines()[-1]
    commas = tmp_path / "commas.csv"  # a spreadsheet's decimal commas, ';'-separated
    commas.write_text("a;b;label\n" + "".join(f"{i},5;2,25;{i % 2}\n" for i in range(20)))
    result = cli("prune", path, "-o", tmp_path / "p.keras", "--data", commas,
                 "--label-column", "label", "--sparsity", "0.5")
    assert result.exit_code == 1
    assert "column 'a' holds text ('" in result.output
    assert "': write decimals with a point)" in result.output
    result = cli("prune", path, "-o", tmp_path / "p.keras", "--label-column", "y",
                 "--sparsity", "0.5")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "error: --label-column applies to --data (a CSV file; give --data PATH.csv)"
    assert not (tmp_path / "p.keras").exists()


@pytest.mark.parametrize("text, message", [
    ("a,a\n1,2\n", "column name 'a' appears twice in the header row"),
    ("a,b\n" + "1,2\n" * 11 + "1\n", "line 13 has 1 values, the header 2"),
    ("a,b\n" + "1,2\n" * 3 + "1,\n" + "1,2\n" * 8, "column 'b' is empty on line 5"),
    ("a,b\n" + "1,2\n" * 3 + "nan,2\n" * 9, "column 'a' holds NaN or inf on line 5"),
    ("a,b\n" + "1,cat\n" * 12, "label column 'b' holds text ('cat')"),
    ("a,b\n" + "1,2\n" * 5, "only 5 rows; need at least 10"),
    ("a,b\n", "a header but no rows"),
    ("a,b\n1," + "9" * 200_000 + "\n", "field larger than field limit"),
    # a quoted cell spans lines, blank lines are skipped: lines are the file's own
    ('a,b\n"x\ny",1\n\n\n' + "1,2\n" * 4 + "1,\n" + "1,2\n" * 8, "column 'b' is empty on line 10"),
    ("a,b\n" + "1,1e999\n" * 12, "holds a number beyond float64 on line 2"),
])
def test_table_faults_name_the_column_or_line(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(CompressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(str(path), label_column="b")


def test_labels_targets_and_unlabelled_rows(tmp_path):
    folder = tmp_path
    (folder / "r.csv").write_text("x1\tx2\tt\n" + "".join(f"{i}\t{2 * i}\t{i / 4 - 3}\n"
                                                         for i in range(30)))
    ds = load_data(f"csv:{folder / 'r.csv'}", label_column="t", seed=0)
    assert isinstance(ds.x_train, Columns) and list(ds.x_train) == ["x1", "x2"]
    assert ds.y_train.dtype == np.float32 and ds.num_classes == 0  # regression targets
    assert ds.size("train") + ds.size("val") + ds.size("test") == 30
    assert ds.sample_shape == (2,)
    assert isinstance(ds.take(5).x_train, Columns)  # a copy keeps the table's columns
    unlabelled = load_data(str(folder / "r.csv"))
    assert not unlabelled.labelled and list(unlabelled.x_train) == ["x1", "x2", "t"]
    import keras

    from compress.data import prepare

    ready = prepare(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), unlabelled)
    assert ready.x_train.shape == (len(ready.x_train), 3)
    assert "no labels (name the label column with --label-column)" in ready.notes[-1]


def test_a_recipe_builds_its_model_for_the_tables_columns(digits, tmp_path):
    from compress.recipes import run_recipe

    table = _digits_csv(tmp_path / "digits.csv", digits)
    recipe = {"name": "csv", "model": "lenet300", "data": str(table), "label_column": "label",
              "seed": 0, "baseline": {"epochs": 2},
              "steps": [{"prune": {"sparsity": 0.8}}]}
    result = run_recipe(recipe, output=tmp_path / "out")
    assert result["status"] == "finished"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"][0]["before"]["accuracy"] > 0.8  # trained on the 64 columns
    with pytest.raises(CompressError, match="label_column: applies to 'data' .a CSV file."):
        run_recipe({**recipe, "data": None}, output=tmp_path / "out2")


def test_one_long_text_cell_does_not_widen_the_whole_column(tmp_path):
    # A NumPy string array gives every cell the longest one's width: one 100,000-character
    # review among 2,000 rows took 800 MB (among 50,000 rows, 20 GB: a MemoryError).
    import tracemalloc

    review = np.array(["good", "bad", "fine"], dtype=object)[np.arange(2000) % 3]
    review[5] = "long " * 20_000
    (tmp_path / "r.csv").write_text("review,stars\n" + "".join(
        f"{r},{i % 5}\n" for i, r in enumerate(review)))
    tracemalloc.start()
    try:
        ds = load_data(f"csv:{tmp_path / 'r.csv'}", label_column="stars", seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"
    text = np.concatenate([ds.x_train["review"], ds.x_val["review"], ds.x_test["review"]])
    assert max(len(t) for t in text) == len(review[5].strip())
    assert sorted(set(text) - {review[5].strip()}) == ["bad", "fine", "good"]
