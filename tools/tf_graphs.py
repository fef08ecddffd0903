"""Build frozen TensorFlow graphs shaped like Essentia's, from real or random weights.

Each builder writes the network with plain TensorFlow ops inside a ``model``
name scope, the way Essentia's frozen models look: input ``model/Placeholder``
``[batch, time, mel]``; weights as ``Const`` nodes named like the training
variables (``conv2d/kernel``) read through ``.../read`` identities; batch norm
baked for inference (fused on 4-D tensors, TensorFlow's unfused
``batchnorm/mul``/``add_1`` on dense layers); outputs ``model/dense/BiasAdd``
(embeddings), ``model/dense_1/BiasAdd`` (logits) and ``model/Sigmoid``.

Weights come from a ``weights(name, shape) -> np.ndarray`` callable: a TF1
checkpoint reader for the real models, or :func:`random_weights` for test
graphs. TensorFlow is needed here (tools and tests only), never by jaxmir.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

Weights = Callable[[str, tuple], np.ndarray]
EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization's default, as musicnn trained


def checkpoint_weights(checkpoint_dir: str) -> Weights:
    """Read variables from a TF1 checkpoint (musicnn's: the prefix is the folder itself)."""
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_dir.rstrip("/") + "/")

    def weights(name: str, shape: tuple) -> np.ndarray:
        value = reader.get_tensor(name)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"checkpoint variable {name} has shape "
                             f"{value.shape}, expected {shape}")
        return value.astype(np.float32)

    return weights


def random_weights(seed: int = 0) -> Weights:
    """Deterministic random weights with sensible scales (He-normal kernels, positive variances)."""
    rng = np.random.default_rng(seed)

    def weights(name: str, shape: tuple) -> np.ndarray:
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("kernel", "weights"):
            fan_in = int(np.prod(shape[:-1]))
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if leaf in ("moving_variance",):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if leaf in ("gamma",):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    return weights


class _Builder:
    """Creates weight constants (``<name>`` + ``<name>/read``) and layers in the current graph."""

    def __init__(self, weights: Weights):
        self.weights = weights

    def variable(self, name: str, shape: tuple) -> tf.Tensor:
        value = self.weights(name, tuple(shape))
        with tf.compat.v1.get_default_graph().name_scope(""):
            const = tf.constant(value, name=name)
            return tf.identity(const, name=f"{name}/read")

    def conv(self, x, name: str, kernel: tuple, filters: int, padding: str,
             activation=tf.nn.relu, variable: str | None = None):
        shape = (*kernel, int(x.shape[-1]), filters)
        variable = variable or name
        with tf.name_scope(name):
            y = tf.nn.conv2d(x, self.variable(f"{variable}/kernel", shape), strides=1,
                             padding=padding, name="Conv2D")
            y = tf.nn.bias_add(y, self.variable(f"{variable}/bias", (filters,)), name="BiasAdd")
            return activation(y, name=activation.__name__.capitalize()) if activation else y

    def batch_norm(self, x, name: str, fused: bool = True):
        channels = (int(x.shape[-1]),)
        gamma, beta, mean, var = (self.variable(f"{name}/{v}", channels)
                                  for v in ("gamma", "beta", "moving_mean", "moving_variance"))
        with tf.name_scope(name):
            if fused:
                return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=EPSILON,
                                                        is_training=False, name="FusedBatchNorm")[0]
            return tf.nn.batch_normalization(x, mean, var, beta, gamma, EPSILON, name="batchnorm")

    def dense(self, x, name: str, units: int, variable: str | None = None):
        variable = variable or name
        with tf.name_scope(name):
            y = tf.linalg.matmul(x, self.variable(f"{variable}/kernel", (int(x.shape[-1]), units)),
                                 name="MatMul")
            return tf.nn.bias_add(y, self.variable(f"{variable}/bias", (units,)), name="BiasAdd")


def _frequency_max(x, scope: str):
    width = int(x.shape[2])
    pooled = tf.nn.max_pool2d(x, ksize=[1, 1, width, 1], strides=[1, 1, width, 1],
                              padding="VALID", name=f"{scope}/MaxPool")
    return tf.squeeze(pooled, [2])


def _classifier(b: "_Builder", x, layers, output: str, first: int = 1):
    """Dense layers ``[(units, activation | None), ...]`` named ``dense`` (0), ``dense_1``, ... from
    ``first``, then ``model/<output>`` (Sigmoid, Softmax or Identity)."""
    for i, (units, activation) in enumerate(layers, start=first):
        name = "dense" if i == 0 else f"dense_{i}"
        x = b.dense(x, name, units)
        if activation:
            x = getattr(tf.nn, activation)(x, name=f"{name}/{activation.capitalize()}")
    return tf.identity(x, name=output) if output == "Identity" else \
        getattr(tf.nn, output.lower())(x, name=output)


def musicnn_graph(weights: Weights, n_labels: int = 50, midend: int = 64, backend: int = 200,
                  time: int = 187, mels: int = 96, classifier: list | None = None,
                  output: str = "Sigmoid") -> tf.compat.v1.GraphDef:
    """MusiCNN as Essentia's frozen ``msd-musicnn-1.pb``: (conv -> ReLU -> BN) everywhere.

    With ``classifier=[(units, activation), ...]`` the 50-way logits are replaced
    by those dense layers, as in Essentia's transfer classifiers
    (``genre_dortmund-musicnn-msd-2.pb``: ``[(100, None), (9, None)]``, Sigmoid).
    """
    graph = tf.Graph()
    b = _Builder(weights)
    with graph.as_default(), tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, time, mels], name="Placeholder")
        x = b.batch_norm(tf.expand_dims(x, 3), "batch_normalization")
        padded = tf.pad(x, [[0, 0], [3, 3], [0, 0], [0, 0]])
        branches, index = [], 1
        for i, width in enumerate((int(0.4 * mels), int(0.7 * mels))):
            y = b.conv(padded, "conv2d" if i == 0 else f"conv2d_{i}", (7, width), 204, "VALID")
            y = b.batch_norm(y, f"batch_normalization_{index}")
            branches.append(_frequency_max(y, "max_pooling2d" if i == 0 else f"max_pooling2d_{i}"))
            index += 1
        for i, length in enumerate((128, 64, 32), start=2):
            y = b.conv(x, f"conv2d_{i}", (length, 1), 51, "SAME")
            y = b.batch_norm(y, f"batch_normalization_{index}")
            branches.append(_frequency_max(y, f"max_pooling2d_{i}"))
            index += 1
        front = tf.expand_dims(tf.concat(branches, 2), 3)
        layers, previous = [front], None
        for i in range(3):
            source = front if previous is None else previous
            y = b.conv(tf.pad(source, [[0, 0], [3, 3], [0, 0], [0, 0]]), f"conv2d_{5 + i}",
                       (7, int(source.shape[2])), midend, "VALID")
            y = tf.transpose(b.batch_norm(y, f"batch_normalization_{6 + i}"), [0, 1, 3, 2])
            previous = y if previous is None else tf.add(y, previous)
            layers.append(previous)
        features = tf.concat(layers, 2)
        max_pool = tf.reduce_max(features, axis=1)
        mean_pool, _ = tf.nn.moments(features, axes=[1])
        pooled = tf.concat([max_pool, mean_pool], 2)
        with tf.name_scope("flatten"):
            flat = tf.reshape(pooled, [-1, int(pooled.shape[1]) * int(pooled.shape[2])],
                              name="Reshape")
        flat = tf.identity(b.batch_norm(flat, "batch_normalization_9", fused=False),
                           name="dropout/Identity")
        hidden = tf.nn.relu(b.dense(flat, "dense", backend), name="dense/Relu")
        hidden = tf.identity(b.batch_norm(hidden, "batch_normalization_10", fused=False),
                             name="dropout_1/Identity")
        _classifier(b, hidden, classifier or [(n_labels, None)], output)
    return graph.as_graph_def()


def vgg_graph(weights: Weights, n_labels: int = 50, filters: int = 128, time: int = 187,
              mels: int = 96, classifier: list | None = None,
              output: str = "Sigmoid") -> tf.compat.v1.GraphDef:
    """musicnn's VGG baseline as a frozen graph: BN, 5 x (conv3x3, ReLU, BN, pool), dense.

    ``classifier=[(units, activation), ...]`` adds dense layers before the output.
    """
    pools = [((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)),
             ((4, 4), (4, 4))]
    graph = tf.Graph()
    b = _Builder(weights)
    with graph.as_default(), tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, time, mels], name="Placeholder")
        x = b.batch_norm(tf.expand_dims(x, 3), "batch_normalization")
        for i, (window, stride) in enumerate(pools, start=1):
            x = b.conv(x, f"{i}CNN", (3, 3), filters, "SAME")
            x = b.batch_norm(x, f"batch_normalization_{i}")
            x = tf.nn.max_pool2d(x, ksize=[1, *window, 1], strides=[1, *stride, 1], padding="VALID",
                                 name="max_pooling2d/MaxPool" if i == 1
                                 else f"max_pooling2d_{i - 1}/MaxPool")
        with tf.name_scope("flatten"):
            x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))], name="Reshape")
        x = tf.identity(x, name="dropout/Identity")
        _classifier(b, x, classifier or [(n_labels, None)], output, first=0)
    return graph.as_graph_def()


def vggish_graph(weights: Weights, fc2_relu: bool = False, widths=(64, 128, 256, 512),
                 fc=(4096, 4096, 128), classifier: list | None = None,
                 output: str = "Softmax", patch=(96, 64)) -> tf.compat.v1.GraphDef:
    """VGGish as Essentia's ``audioset-vggish-3.pb``: ``model/Placeholder`` [b, *patch] ->
    ``model/vggish/...`` -> ``model/vggish/embeddings`` (128).

    ``fc2_relu`` chooses the 2017 release (ReLU after fc2) or Google's current
    code (pre-activation embeddings). ``widths``/``fc`` shrink the network for
    quick tests, ``patch`` (frames, bands) changes its input. With
    ``classifier=[(units, activation), ...]`` the graph goes on to ``model/<output>``, as
    Essentia's VGGish transfer classifiers do.
    """
    graph = tf.Graph()
    b = _Builder(_slim_names(weights))
    with graph.as_default(), tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, *patch], name="Placeholder")
        with tf.name_scope("vggish"):
            x = tf.reshape(x, [-1, *patch, 1], name="Reshape")
            stages = [("conv1",), ("conv2",), ("conv3/conv3_1", "conv3/conv3_2"),
                      ("conv4/conv4_1", "conv4/conv4_2")]
            for stage, (names, width) in enumerate(zip(stages, widths), start=1):
                for name in names:
                    x = b.conv(x, name, (3, 3), width, "SAME", variable=f"vggish/{name}")
                x = tf.nn.max_pool2d(x, 2, 2, "SAME", name=f"pool{stage}/MaxPool")
            with tf.name_scope("Flatten/flatten"):
                x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))], name="Reshape")
            for name, units in zip(("fc1/fc1_1", "fc1/fc1_2", "fc2"), fc):
                x = b.dense(x, name, units, variable=f"vggish/{name}")
                if name != "fc2" or fc2_relu:
                    x = tf.nn.relu(x, name=f"{name}/Relu")
            x = tf.identity(x, name="embeddings")
        if classifier:
            _classifier(b, x, classifier, output, first=0)
    return graph.as_graph_def()


def _slim_names(weights: Weights) -> Weights:
    """TF-Slim's variable names (``weights``/``biases``) for the VGGish scopes."""
    def renamed(name: str, shape: tuple) -> np.ndarray:
        if name.startswith("vggish/"):
            name = name.replace("/kernel", "/weights").replace("/bias", "/biases")
        return weights(name, shape)
    return renamed


def embedding_head_graph(weights: Weights, features: int = 200, hidden: int | None = 100,
                         classes: int = 2, output: str = "Softmax",
                         input_name: str = "model/Placeholder", input_shape=None,
                         partitioned: bool = False) -> tf.compat.v1.GraphDef:
    """An Essentia classification head on embeddings (TensorflowPredict2D's models).

    ``model/Placeholder`` [b, features] -> dense ``hidden`` + ReLU -> dense ``classes``
    -> ``model/Softmax`` (or Sigmoid, or ``model/Identity`` for regression); ``hidden=None``
    (TF 1 form only): the one dense layer of a linear classifier.
    ``partitioned=True`` builds the TF 2 export form: input
    ``serving_default_model_Placeholder``, the network inside a library function
    called by the node ``PartitionedCall``.
    """
    b = _Builder(weights)
    graph = tf.Graph()
    shape = input_shape or [None, features]
    if not partitioned:
        with graph.as_default(), tf.name_scope("model"):
            x = tf.compat.v1.placeholder(tf.float32, shape, name=input_name.rsplit("/", 1)[-1])
            x = tf.reshape(x, [-1, features]) if len(shape) > 2 else x
            layers = ([(hidden, "relu")] if hidden else []) + [(classes, None)]
            _classifier(b, x, layers, output, first=0)
        return graph.as_graph_def()
    values = {name: weights(name, shape_) for name, shape_ in [
        ("dense/kernel", (features, hidden)), ("dense/bias", (hidden,)),
        ("dense_1/kernel", (hidden, classes)), ("dense_1/bias", (classes,))]}

    @tf.function
    def head(x):
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, values["dense/kernel"]), values["dense/bias"]))
        y = tf.nn.bias_add(tf.matmul(h, values["dense_1/kernel"]), values["dense_1/bias"])
        return tf.identity(y) if output == "Identity" else getattr(tf.nn, output.lower())(y)

    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="serving_default_model_Placeholder")
        head(x)
    return graph.as_graph_def()


def essentia_metadata(classes: list[str], output: str, embedding_model: str | None = None,
                      input_name: str = "model/Placeholder", kind: str = "multi-class classifier"
                      ) -> dict:
    """A model JSON with the fields of Essentia's (classes, schema, inference)."""
    inference = {"sample_rate": 16000, "algorithm": "TensorflowPredict2D"}
    if embedding_model:
        inference["embedding_model"] = {"algorithm": "TensorflowPredictMusiCNN",
                                        "model_name": embedding_model}
    return {"name": "test head", "type": kind, "version": "1", "classes": classes,
            "schema": {"inputs": [{"name": input_name, "type": "float"}],
                       "outputs": [{"name": output, "type": "float",
                                    "op": output.rsplit("/", 1)[-1],
                                    "output_purpose": "predictions"}]},
            "inference": inference}


def write_graph(graph_def, path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(graph_def.SerializeToString())


def run_graph(graph_def, inputs: dict, outputs: list[str],
              optimize: bool = True) -> list[np.ndarray]:
    """Run a frozen graph in a TF1 session (what Essentia does through the C API).

    ``optimize=False`` turns off Grappler's graph rewriting (the same kernels,
    unfused): on a graph with VGGish's 290 MB of constants its constant folding
    alone takes ~20 s per session.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = not optimize
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        return session.run([o if ":" in o else o + ":0" for o in outputs],
                           {k if ":" in k else k + ":0": v for k, v in inputs.items()})
