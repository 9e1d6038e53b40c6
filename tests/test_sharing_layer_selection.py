"""Which layers share (and prune) acts on: one ``layers`` rule for every pass."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from compress.errors import CompressError


def _model():
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(4, 3, name="conv1"), keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(4, 3, name="conv2"), keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(8, name="fc1"), keras.layers.Dense(8, name="fc2"),
        keras.layers.Dense(3, name="out")], name="net")


@pytest.mark.parametrize("layers, expected", [
    (None, ["conv1", "conv2", "fc1", "fc2", "out"]),
    (["fc1"], ["fc1"]),
    (["fc.*"], ["fc1", "fc2"]),
    (["out", "conv.*"], ["conv1", "conv2", "out"]),  # model order, not the entries' order
    (["Dense"], ["fc1", "fc2", "out"]),  # a class name
    ("fc.*,out", ["fc1", "fc2", "out"]),  # a recipe's or the CLI's comma-separated string
    ("fc1|fc2", ["fc1", "fc2"]),  # a single regular expression, as share took before
])
def test_share_and_prune_select_the_same_layers(layers, expected):
    from compress.pruning.masks import prunable_weights
    from compress.pruning.prune_options import PRUNE_OPTIONS
    from compress.sharing.layer_selection import shareable_layers
    from compress.sharing.share_options import SHARE_OPTIONS

    model = _model()
    share_layers = SHARE_OPTIONS.validate({"layers": layers})["layers"]
    prune_layers = PRUNE_OPTIONS.validate({"layers": layers})["layers"]
    assert share_layers == prune_layers
    shared = [la.name for la in shareable_layers(model, share_layers, "hashed")]
    pruned = [la.name for la, _ in prunable_weights(model, prune_layers)]
    assert shared == pruned == expected


@pytest.mark.parametrize("layers, message", [
    (["fc"], ("layers 'fc': matches no shareable layer of model 'net' (shareable: conv1, "
              "conv2, fc1, fc2, out)")),  # a regular expression matches the whole name
    (["fc1", "nothing"], "layers 'nothing': matches no shareable layer"),
    (["bn1"], "layer 'bn1' (BatchNormalization) cannot be hashed"),
    (["fc[1"], "layers 'fc[1': not a valid regular expression"),
])
def test_share_refuses_layers_it_cannot_act_on(layers, message):
    from compress.sharing.layer_selection import shareable_layers

    with pytest.raises(CompressError) as refused:
        shareable_layers(_model(), layers, "hashed")
    assert str(refused.value).startswith(message)


def test_prune_refuses_the_same_selectors_with_its_own_layer_kind():
    from compress.pruning.masks import prunable_weights

    with pytest.raises(CompressError, match="layers 'fc': matches no prunable layer of model "
                                            "'net'"):
        prunable_weights(_model(), ["fc"])
