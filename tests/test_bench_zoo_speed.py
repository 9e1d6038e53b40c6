"""The zoo-speed case's float probe: weights rounded per channel to TFLite's int8 grid."""

import numpy as np


def _model():
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="fc"),
    ])


def test_rounded_weights_snap_each_channel_to_its_own_int8_grid_on_a_copy():
    from bench.cases.zoo_speed import rounded_weights

    model = _model()
    # channels of very different ranges: one shared scale would flatten the small ones
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            w = np.asarray(layer.kernel)
            layer.kernel.assign(w * np.logspace(-3, 0, w.shape[-1]).astype("float32"))
    before = [np.asarray(v).copy() for v in model.weights]
    copy = rounded_weights(model)
    for v, b in zip(model.weights, before):  # the input model is not touched
        np.testing.assert_array_equal(np.asarray(v), b)
    for name, keep in (("conv", 1), ("dw", 2), ("fc", 1)):
        w = np.asarray(model.get_layer(name).kernel)
        q = np.asarray(copy.get_layer(name).kernel)
        axes = tuple(range(w.ndim - keep))
        scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
        codes = q / scale
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the grid
        assert np.all(np.abs(q - w) <= scale / 2 + 1e-7)  # the nearest point of it
        assert np.abs(codes).max() <= 127 + 1e-3 and not np.array_equal(q, w)
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    assert np.abs(copy(x) - model(x)).max() > 0
