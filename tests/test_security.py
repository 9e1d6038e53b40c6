"""Safe by default: no eval/exec/pickle of user input anywhere in the package."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compress"

FORBIDDEN = [
    (re.compile(r"(?<![\w.])eval\("), "eval("),
    (re.compile(r"(?<![\w.])exec\("), "exec("),
    (re.compile(r"\bimport pickle\b|\bpickle\.loads?\("), "pickle"),
    (re.compile(r"yaml\.load\((?!.*Loader=yaml\.SafeLoader)"), "yaml.load"),
    (re.compile(r"yaml\.unsafe_load|yaml\.full_load"), "unsafe yaml"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"safe_mode\s*=\s*False"), "safe_mode=False"),
]


def test_package_has_no_unsafe_deserialization():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, label in FORBIDDEN:
                if pattern.search(code):
                    hits.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {label}")
    assert hits == []


def test_the_check_itself_catches_a_violation(tmp_path):
    line = "data = pickle.loads(blob)"
    assert any(p.search(line) for p, _ in FORBIDDEN)
    assert any(p.search("m = load_model(p, safe_mode=False)") for p, _ in FORBIDDEN)
    assert not any(p.search("keras.models.load_model(p, safe_mode=not unsafe)")
                   for p, _ in FORBIDDEN)


def test_nan_loss_stops_with_one_line(digits):
    import keras
    import numpy as np
    import pytest

    from compress import training
    from compress.data import prepare
    from compress.errors import CompressError

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    ds = prepare(model, digits)
    ds.x_train = ds.x_train.copy()
    ds.x_train[5] = np.inf
    training.compile_classifier(model)
    with pytest.raises(CompressError, match="NaN or infinite"):
        training.fit(model, ds, epochs=1, verbose=0)
