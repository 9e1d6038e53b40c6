"""compress.cascade.blocks: a chain model split into blocks and a head."""

from __future__ import annotations

import keras
import pytest

from compress.cascade.blocks import split_blocks
from compress.errors import CompressError
from compress.models import build


def test_split_blocks_of_builders():
    blocks, head = split_blocks(build("small-cnn"))
    assert [[la.name for la in b] for b in blocks] == [
        ["conv1", "bn1", "relu1", "pool1"], ["conv2", "bn2", "relu2", "pool2"],
        ["conv3", "bn3", "relu3"]]
    assert [la.name for la in head] == ["gap", "predictions"]
    blocks, head = split_blocks(build("lenet300"))
    assert [[la.name for la in b] for b in blocks] == [["flatten", "fc1"], ["fc2"]]
    assert [la.name for la in head] == ["predictions"]


def test_functional_branches_are_refused():
    inp = keras.Input((8,))
    a, b = keras.layers.Dense(4)(inp), keras.layers.Dense(4)(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(CompressError, match="chain"):
        split_blocks(model)
