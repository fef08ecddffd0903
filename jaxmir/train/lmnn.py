"""Large Margin Nearest Neighbour metric learning (Weinberger & Saul) in JAX.

A linear map ``L [n_components, features]`` minimises

    (1 - push) * sum_i sum_{j in T(i)} d(i, j)
      + push * sum_i sum_{j in T(i)} sum_{l: y_l != y_i} [1 + d(i, j) - d(i, l)]_+

with ``d(a, b) = |L (x_a - x_b)|^2`` and ``T(i)`` the ``k`` nearest points of
``i``'s class in the input space (the target neighbours, fixed). ``push``
is metric-learn's ``1 - regularization``; 0.5 weighs both terms equally.

The objective is differentiated by JAX; steps follow metric-learn's rule:
a step that raises the objective is retried at half the rate, an accepted
step grows the rate by 1 %, and the loop stops once the objective changes by
less than ``tol`` after ``min_iter`` iterations, or after ``max_iter``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.checks import is_whole
from jaxmir.errors import InputError
from jaxmir.promotion import PRECISION, standard_promotion



def target_neighbors(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` indices of each point's ``k`` nearest same-class points (squared Euclidean)."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    if not is_whole(k, 1):  # none: no pull, the map left at its start and nothing said
        raise InputError(f"LMNN with k = {k!r} target neighbours; expected a whole number >= 1")
    counts = np.unique(labels, return_counts=True)[1]
    if counts.min() <= k:
        raise InputError(f"LMNN with k = {k} target neighbours needs more than {k} tracks in every "
                         f"class; the smallest class has {counts.min()}")
    out = np.empty((len(x), k), int)
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        diff = x[members][:, None, :] - x[members][None, :, :]
        dist = np.einsum("ijk,ijk->ij", diff, diff)
        np.fill_diagonal(dist, np.inf)
        out[members] = members[np.argsort(dist, axis=1, kind="stable")[:, :k]]
    return out


@standard_promotion
def objective(components: jax.Array, x: jax.Array, labels: jax.Array, targets: jax.Array,
              push: float = 0.5) -> jax.Array:
    """The LMNN loss of ``components [m, d]`` on ``x [n, d]``; ``targets [n, k]``."""
    z = jnp.matmul(x, components.T, precision=PRECISION)
    sq = jnp.sum(z ** 2, axis=1)
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(z, z.T, precision=PRECISION),
                       0.0)  # [n, n]
    to_target = jnp.take_along_axis(dist, targets, axis=1)  # [n, k]
    impostor = (labels[:, None] != labels[None, :]).astype(z.dtype)  # [n, n]
    hinge = jax.nn.relu(1.0 + to_target[:, :, None] - dist[:, None, :])  # [n, k, n]
    return (1.0 - push) * jnp.sum(to_target) + push * jnp.sum(hinge * impostor[:, None, :])


def pca_init(x: np.ndarray, n_components: int) -> np.ndarray:
    """The first ``n_components`` principal axes ``[n_components, d]`` (metric-learn's "pca")."""
    centred = np.asarray(x, np.float64) - np.mean(x, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    if n_components > vt.shape[0]:
        raise InputError(f"{n_components} LMNN components from {vt.shape[0]} principal axes; "
                         f"use at most {vt.shape[0]}")
    return vt[:n_components]


@dataclasses.dataclass
class LMNNResult:
    components: np.ndarray  # [n_components, features]
    objective: float
    iterations: int
    targets: np.ndarray  # [n, k]

    def transform(self, x) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.components.T.astype(np.float32)


@standard_promotion
def fit_lmnn(x, labels, n_components: int | None = None, k: int = 3, push: float = 0.5,
             max_iter: int = 10000, min_iter: int = 50, learn_rate: float = 1e-7,
             tol: float = 1e-3, init: np.ndarray | None = None) -> LMNNResult:
    """Learn the LMNN map of ``x [n, d]`` with integer ``labels [n]``.

    Args:
      n_components: output dimensions (default ``d``); initialised by PCA
        when fewer than ``d``, else the identity, unless ``init`` is given.
      k: target neighbours per point; ``push``: the impostor term's weight.
      max_iter, min_iter, learn_rate, tol: metric-learn's schedule (defaults
        as metric-learn, ``max_iter`` as the paper's 10,000).
    """
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    d = x.shape[1]
    n_components = d if n_components is None else int(n_components)
    if init is None:
        init = pca_init(x, n_components) if n_components < d else np.eye(d)
    targets = target_neighbors(x, labels, k)
    xj, yj, tj = jnp.asarray(x), jnp.asarray(labels), jnp.asarray(targets)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda c: objective(c, xj, yj, tj, push)))

    components = jnp.asarray(init, jnp.float32)
    value, grad = value_and_grad(components)
    it = 1
    for it in range(2, max_iter):
        while True:
            candidate = components - learn_rate * grad
            new_value, new_grad = value_and_grad(candidate)
            if not np.isfinite(float(new_value)):
                raise InputError("the LMNN objective became non-finite; standardise the features")
            if float(new_value) > float(value):
                learn_rate /= 2.0
                if learn_rate < 1e-30:  # no descent direction left: stop where we are
                    new_value, candidate, new_grad = value, components, grad
                    break
            else:
                break
        delta = float(new_value) - float(value)
        components, value, grad = candidate, new_value, new_grad
        learn_rate *= 1.01
        if it > min_iter and abs(delta) < tol:
            break
    return LMNNResult(np.asarray(components, np.float64), float(value), it, targets)
