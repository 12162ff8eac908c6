"""Train the demo's small CNN on scikit-learn's digits (8x8 images, shipped inside the package)
and export it to ONNX: ``examples/digits_cnn.onnx``.

    conv 3x3 (1 -> 8, pad 1) -> ReLU -> max pool 2 -> conv 3x3 (8 -> 16, pad 1) -> ReLU
    -> max pool 2 -> flatten (64) -> dense (64 -> 10)

Plain numpy (im2col convolutions, backpropagation by hand, Adam), about ten seconds on one
core. The split is ``split()`` below: the demo evaluates on the same test images.

    python examples/train_digits.py [-o examples/digits_cnn.onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent
SEED = 2026
TEST_SHARE = 0.2


def split():
    """(x_train, x_test, y_train, y_test): images N x 1 x 8 x 8 scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(
        x, digits.target, test_size=TEST_SHARE, random_state=SEED, stratify=digits.target
    )


def _cols(x, k=3, pad=1):
    """N x C x H x W -> N x H x W x (C*k*k) patches (stride 1, same padding)."""
    n, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty((n, h, w, c, k, k), x.dtype)
    for i in range(k):
        for j in range(k):
            out[..., i, j] = p[:, :, i : i + h, j : j + w].transpose(0, 2, 3, 1)
    return out.reshape(n, h, w, c * k * k)


def _uncols(g, shape, k=3, pad=1):
    """The adjoint of _cols: patch gradients back onto the input."""
    n, c, h, w = shape
    g = g.reshape(n, h, w, c, k, k)
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), g.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i : i + h, j : j + w] += g[..., i, j].transpose(0, 3, 1, 2)
    return out[:, :, pad : pad + h, pad : pad + w]


def _pool(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    y = r.max(axis=(3, 5))
    mask = r == y[:, :, :, None, :, None]
    return y, mask


class Net:
    def __init__(self, rng):
        self.p = {
            "w1": rng.normal(0, np.sqrt(2 / 9), (8, 1, 3, 3)),
            "b1": np.zeros(8),
            "w2": rng.normal(0, np.sqrt(2 / 72), (16, 8, 3, 3)),
            "b2": np.zeros(16),
            "w3": rng.normal(0, np.sqrt(1 / 64), (64, 10)),
            "b3": np.zeros(10),
        }

    def forward(self, x):
        p, c = self.p, {}
        c["c1"] = _cols(x)
        z1 = c["c1"] @ p["w1"].reshape(8, -1).T + p["b1"]  # N H W 8
        a1 = np.maximum(z1, 0).transpose(0, 3, 1, 2)
        h1, c["m1"] = _pool(a1)
        c["z1"], c["h1"] = z1, h1
        c["c2"] = _cols(h1)
        z2 = c["c2"] @ p["w2"].reshape(16, -1).T + p["b2"]
        a2 = np.maximum(z2, 0).transpose(0, 3, 1, 2)
        h2, c["m2"] = _pool(a2)
        c["z2"], c["f"] = z2, h2.reshape(len(x), -1)
        return c["f"] @ p["w3"] + p["b3"], c

    def backward(self, c, dlogits):
        p, g = self.p, {}
        g["w3"], g["b3"] = c["f"].T @ dlogits, dlogits.sum(0)
        dh2 = (dlogits @ p["w3"].T).reshape(-1, 16, 2, 2)
        da2 = (c["m2"] * dh2[:, :, :, None, :, None]).reshape(-1, 16, 4, 4)
        dz2 = da2.transpose(0, 2, 3, 1) * (c["z2"] > 0)
        g["w2"] = (dz2.reshape(-1, 16).T @ c["c2"].reshape(-1, 72)).reshape(16, 8, 3, 3)
        g["b2"] = dz2.sum((0, 1, 2))
        dh1 = _uncols(dz2 @ p["w2"].reshape(16, -1), c["h1"].shape)
        da1 = (c["m1"] * dh1[:, :, :, None, :, None]).reshape(-1, 8, 8, 8)
        dz1 = da1.transpose(0, 2, 3, 1) * (c["z1"] > 0)
        g["w1"] = (dz1.reshape(-1, 8).T @ c["c1"].reshape(-1, 9)).reshape(8, 1, 3, 3)
        g["b1"] = dz1.sum((0, 1, 2))
        return g


def train(epochs: int = 40, batch: int = 32, lr: float = 3e-3) -> Net:
    x, _, y, _ = split()
    rng = np.random.default_rng(SEED)
    net = Net(rng)
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            logits, cache = net.forward(x[idx].astype(np.float64))
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1
            grads = net.backward(cache, prob / len(idx))
            step += 1
            for k in net.p:
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                mh, vh = m[k] / (1 - 0.9**step), v[k] / (1 - 0.999**step)
                net.p[k] -= lr * mh / (np.sqrt(vh) + 1e-8)
    return net


def to_onnx(net: Net) -> onnx.ModelProto:
    p = {k: numpy_helper.from_array(v.astype(np.float32), k) for k, v in net.p.items()}
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape")
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="conv1", **conv),
        helper.make_node("Relu", ["z1"], ["a1"], name="relu1"),
        helper.make_node("MaxPool", ["a1"], ["h1"], name="pool1", **pool),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["z2"], name="conv2", **conv),
        helper.make_node("Relu", ["z2"], ["a2"], name="relu2"),
        helper.make_node("MaxPool", ["a2"], ["h2"], name="pool2", **pool),
        helper.make_node("Reshape", ["h2", "flat_shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [*p.values(), shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "digits_cnn.onnx"))
    args = parser.parse_args()
    net = train()
    _, x_test, _, y_test = split()
    logits, _ = net.forward(x_test.astype(np.float64))
    print(f"float test accuracy: {np.mean(logits.argmax(1) == y_test):.2%}")
    onnx.save(to_onnx(net), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
