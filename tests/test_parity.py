"""Numeric parity with TensorFlow for every shipped model, on the graphs built from the real
checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxmir
from conftest import SHIPPED, assert_parity, run_tf

INPUTS = {
    "random": lambda n: np.random.default_rng(1).standard_normal((n, 187, 96)).astype(np.float32),
    "zeros": lambda n: np.zeros((n, 187, 96), np.float32),
    # log-mel bands reach ~5 for loud music; 40 is far beyond, to exercise saturation
    "large": lambda n: np.random.default_rng(2).uniform(0, 40, (n, 187, 96)).astype(np.float32),
}


def outputs_of(model) -> list[str]:
    names = ["model/Sigmoid", "model/dense/BiasAdd"]
    return names + (["model/dense_1/BiasAdd"] if model.architecture == "musicnn" else [])


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("batch", [1, 7])
def test_shipped_model_equals_tensorflow(musicnn_graphs, name, kind, batch):
    _check_against_tensorflow(musicnn_graphs, name, kind, batch)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_equals_tensorflow_as_built_for_either_cpu(musicnn_graphs, name, cpu):
    """The programs built for an AVX2 CPU (ConvNets without YNNPACK, MusiCNN's 7x67 branch as a
    1-D convolution) and for an AVX-512 one, whichever CPU runs the test."""
    _check_against_tensorflow(musicnn_graphs, name, "large", 7)


def _check_against_tensorflow(musicnn_graphs, name: str, kind: str, batch: int) -> None:
    path = musicnn_graphs / f"{name}-1.pb"
    model = jaxmir.load(path)
    patches = INPUTS[kind](batch)
    names = outputs_of(model)
    reference = run_tf(path, {"model/Placeholder": patches}, names)
    ours = model.apply(patches, names)
    for node, expected in zip(names, reference):
        assert_parity(f"{name}/{kind}/{node}", expected, ours[node], node == "model/Sigmoid")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_equal_the_graph_import(musicnn_graphs, name):
    shipped = jaxmir.load(name)
    imported = jaxmir.load(musicnn_graphs / f"{name}-1.pb")
    assert shipped.spec.config == imported.spec.config
    assert shipped.labels == imported.labels and len(shipped.labels) == 50
    for a, b in zip(jax.tree_util.tree_leaves(shipped.variables),
                    jax.tree_util.tree_leaves(imported.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    patches = INPUTS["random"](3)
    np.testing.assert_array_equal(shipped.apply(patches)["predictions"],
                                  imported.apply(patches)["predictions"])
