"""Label distribution learning: JAX MFCCs vs librosa, JAX LMNN vs metric-learn, k-NN smoothing."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require
from jaxmir.errors import InputError
from jaxmir.train import lmnn, mfcc, smoothing


def _metric_learn():
    """metric-learn 0.7 passes ``force_all_finite``, which scikit-learn 1.8 renamed; adapt it."""
    module = require("metric_learn")
    util = require("metric_learn._util")
    validation = require("sklearn.utils.validation")
    import inspect

    if "force_all_finite" not in inspect.signature(validation.check_array).parameters:
        def renamed(fn):
            def call(*args, force_all_finite=True, **kwargs):
                return fn(*args, ensure_all_finite=force_all_finite, **kwargs)
            return call

        util.check_X_y = renamed(validation.check_X_y)
        util.check_array = renamed(validation.check_array)
    return module


def test_mfcc_matches_librosa():
    librosa = require("librosa")
    rng = np.random.default_rng(0)
    t = np.arange(44100 * 2) / 44100
    y = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t) + 0.05 * rng.standard_normal(len(t)))
    y = y.astype(np.float32)
    ref = librosa.feature.mfcc(y=y, sr=44100, n_mfcc=13, n_fft=2048, win_length=1024,
                               hop_length=512).T
    ours = np.asarray(mfcc.mfcc(y, 44100))
    assert ours.shape == ref.shape
    # float32 FFTs of 2048 points and sums over 1025 bins then 128 bands: relative rounding
    # ~1e-6 of the largest coefficient (|c0| ~ 1e2); 1e-4 of it leaves room for other CPUs
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.max(np.abs(ref))
    # a second of digital silence: its bands meet the floor 80 dB below the loudest (without
    # the floor they sat at -100 dB, coefficients ~500 off)
    quiet = np.concatenate([y, np.zeros(44100, np.float32)])
    ref = librosa.feature.mfcc(y=quiet, sr=44100, n_mfcc=13, n_fft=2048, win_length=1024,
                               hop_length=512).T
    ours = np.asarray(mfcc.mfcc(quiet, 44100))
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.max(np.abs(ref))
    # 80 dB softer: the loudest band at -56 dB, the range's floor 80 dB below it at -136 dB, under
    # the power floor (1e-10: -100 dB), which then clips 1,431 of the 22,144 band values
    soft = y * np.float32(1e-4)
    ref = librosa.feature.mfcc(y=soft, sr=44100, n_mfcc=13, n_fft=2048, win_length=1024,
                               hop_length=512).T
    ours = np.asarray(mfcc.mfcc(soft, 44100))
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_mfcc_summaries():
    coefficients = np.random.default_rng(1).standard_normal((200, 13))
    summary = mfcc.mfcc_summary(coefficients)
    np.testing.assert_allclose(summary[:13], coefficients.mean(0), atol=1e-6)
    np.testing.assert_allclose(summary[13:], coefficients.std(0), atol=1e-6)
    pooled = mfcc.mfcc_pooled(coefficients, pool_frames=86)  # two whole windows
    assert pooled.shape == (26,)
    with pytest.raises(InputError, match=r"85 MFCC frames: fewer than one pooling window \(86 "
                                         r"frames\)"):
        mfcc.mfcc_pooled(coefficients[:85], pool_frames=86)
    np.testing.assert_allclose(pooled[13:], coefficients[86:172].mean(0), atol=1e-6)
    # by default the paper's 1-s windows: as many whole frames as librosa counts in a second at
    # 44.1 kHz, hop 512 (86; at 87 these 172 frames gave one window, not two)
    one_second = require("librosa").time_to_frames(1.0, sr=mfcc.SAMPLE_RATE,
                                                   hop_length=mfcc.HOP_LENGTH)
    np.testing.assert_allclose(mfcc.mfcc_pooled(coefficients[:172]),
                               coefficients[:2 * one_second].reshape(2, one_second, 13)
                               .mean(1).reshape(-1), atol=1e-6)
    assert len(mfcc.segment(np.ones(100, np.float32), 10, start=5.0, seconds=15.0)) == 150
    # by default the paper's segment: 15 s from 5 s in (research/training.md, LDL features)
    track = np.arange(30 * 100, dtype=np.float32)
    np.testing.assert_array_equal(mfcc.segment(track, 100), track[5 * 100:20 * 100])
    # a 17-s track has no 15 s from 5 s in: its last 15 s (from 5 s it gave 12 s)
    track = np.arange(17 * 100, dtype=np.float32)
    np.testing.assert_array_equal(mfcc.segment(track, 100), track[2 * 100:])
    # 0.29 s at 100 Hz is 28.999999999999996 samples in floating point: 29 of them, not 28
    assert len(mfcc.segment(track, 100, seconds=0.29)) == 29
    assert mfcc.segment(track, 100, start=0.29, seconds=1.0)[0] == track[29]  # its start too


def test_mfcc_refuses_an_empty_or_multichannel_signal():
    """No samples would give one frame of zero padding's MFCCs, unsaid, as if it were silence."""
    for signal, shape in ((np.zeros(0, np.float32), r"\[0\]"),
                          (np.zeros((2, 4096), np.float32), r"\[2, 4096\]")):
        with pytest.raises(InputError, match=rf"mfcc takes a non-empty mono signal \[n_samples\]"
                                             rf", got {shape}"):
            mfcc.mfcc(signal, 44100)


@pytest.fixture(scope="module")
def wine():
    datasets = require("sklearn.datasets")
    x, y = datasets.load_wine(return_X_y=True)
    return smoothing.standardize(x), y


def _reference_objective(ref, x, y, regularization=0.5):
    """metric-learn's own LMNN objective (its private loss) as a function of a map's components,
    over the target neighbours ``ref`` (a fitted ``metric_learn.LMNN``) chose."""
    from metric_learn.lmnn import _sum_outer_products

    labels = np.unique(y, return_inverse=True)[1]
    targets = ref._select_targets(x, labels)
    k = ref.n_neighbors
    pull = _sum_outer_products(x, targets.flatten(), np.repeat(np.arange(len(x)), k))
    return lambda components: ref._loss_grad(x, components, pull, k, regularization, targets,
                                             labels)[1]


def _fit_both(x, y, max_iter, learn_rate):
    """PCA's 4 axes, and jaxmir's and metric-learn's LMNN of 4 components over 3 neighbours
    from them."""
    init = lmnn.pca_init(x, 4)
    ours = lmnn.fit_lmnn(x, y, 4, k=3, max_iter=max_iter, learn_rate=learn_rate, init=init)
    ref = _metric_learn().LMNN(n_neighbors=3, n_components=4, init=init, max_iter=max_iter,
                               learn_rate=learn_rate, regularization=0.5).fit(x, y)
    return init, ours, ref


def test_lmnn_matches_metric_learn(wine):
    x, y = wine
    init, ours, ref = _fit_both(x, y, max_iter=300, learn_rate=1e-4)
    labels = np.unique(y, return_inverse=True)[1]
    targets = ref._select_targets(x, labels)
    assert np.array_equal(ours.targets, targets)
    reference_objective = _reference_objective(ref, x, y)

    def our_objective(components):
        return float(lmnn.objective(jnp.asarray(components, jnp.float32),
                                    jnp.asarray(x, jnp.float32), jnp.asarray(y),
                                    jnp.asarray(targets)))

    # the same function: float32 sums of ~178*3*178 hinge terms of size ~10 vs float64:
    # relative differences ~1e-6; 1e-4 is safe on any CPU
    for components in (init, ref.components_, ours.components):
        assert our_objective(components) == pytest.approx(reference_objective(components),
                                                          rel=1e-4)
    # the same optimiser from the same start: the final objectives agree to within 2 %
    # (float32 vs float64 steps part ways at hinge kinks; measured 0.05 %)
    assert ours.objective <= 1.02 * reference_objective(ref.components_)
    assert ours.objective < 0.5 * our_objective(init)

    def loo_knn_accuracy(z):
        dist = ((z[:, None] - z[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        votes = y[np.argsort(dist, axis=1)[:, :3]]
        return np.mean([np.bincount(v).argmax() == t for v, t in zip(votes, y)])

    assert abs(loo_knn_accuracy(ours.transform(x)) - loo_knn_accuracy(ref.transform(x))) <= 0.03

    # push is metric-learn's 1 - regularization: at 0.25 the pull weighs 0.75 (the tests above
    # hold at 0.5 whichever term the weight went to; swapped, the two differ by 22% here)
    assert float(lmnn.objective(jnp.asarray(ref.components_, jnp.float32),
                                jnp.asarray(x, jnp.float32), jnp.asarray(y),
                                jnp.asarray(targets), push=0.25)) == pytest.approx(
        _reference_objective(ref, x, y, 0.75)(ref.components_), rel=1e-4)


def test_lmnn_starts_from_scikit_learn_s_principal_axes(wine):
    """metric-learn's "pca" start: PCA's axes of features centred first, each on its own mean
    (uncentred here, -100 to 100 from the origin, the first axis would point at the offsets;
    centred on the mean of all features, the axes would follow the offsets' spread)."""
    PCA = require("sklearn.decomposition").PCA
    x, _ = wine
    x = x + np.linspace(-100.0, 100.0, x.shape[1])
    # 4 axes, and all 13 (as many as the features give: they were refused as too many)
    for count in (4, x.shape[1]):
        ours = lmnn.pca_init(x, count)
        want = PCA(n_components=count, svd_solver="full").fit(x).components_
        # the same unit axes up to sign: |cos| of each pair 1 to float64 rounding
        np.testing.assert_allclose(np.abs(np.sum(ours * want, axis=1)), 1.0, atol=1e-9)


def test_lmnn_steps_as_metric_learn_s(wine):
    """metric-learn's schedule: each accepted step grows the rate by 1 %. From one start, 40
    steps (no convergence check before 50) reach metric-learn's objective: measured 2e-7 apart
    (float32 vs float64; 1 % allows for steps parting ways at a hinge's kink), without the
    growth 7 % above it."""
    x, y = wine
    _, ours, ref = _fit_both(x, y, max_iter=40, learn_rate=1e-5)
    assert ours.iterations == ref.n_iter_ == 39
    assert ours.objective == pytest.approx(_reference_objective(ref, x, y)(ref.components_),
                                           rel=1e-2)


def test_lmnn_takes_a_step_that_leaves_the_objective_as_it_was():
    """metric-learn retries a step only when it raises the objective (``delta_obj > 0``). A first
    step under float32's resolution leaves the map and its objective as they were; taken, the
    rate grows 1 % a step until steps tell: retried, the rate halved to nothing and the map
    stayed at its start."""
    x = smoothing.standardize(np.random.default_rng(0).standard_normal((12, 3)))
    labels = np.arange(12) % 2
    init = lmnn.pca_init(x, 2).astype(np.float32)
    targets = lmnn.target_neighbors(x, labels, 2)
    start, grad = jax.value_and_grad(lmnn.objective)(
        jnp.asarray(init), jnp.asarray(x, jnp.float32), jnp.asarray(labels), jnp.asarray(targets))
    # a rate whose step is 0.9 of half a float32 spacing at most: no component moves
    rate = 0.9 / np.max(np.abs(grad) / (np.spacing(np.abs(init)) / 2))
    assert np.array_equal(init - np.float32(rate) * np.asarray(grad), init)
    result = lmnn.fit_lmnn(x, labels, 2, k=2, max_iter=100, learn_rate=rate, tol=0.0, init=init)
    assert result.objective < float(start)


def test_lmnn_of_all_dimensions_starts_from_the_identity(wine):
    """As many components as features: the map starts from the identity (metric-learn's
    init="identity"), not from PCA's axes, a rotation of the map (the same metric) that the
    map's components would keep. 10 steps: measured 6e-8 from metric-learn's, 0.03 from the
    identity."""
    ml = _metric_learn()
    x, y = wine
    ours = lmnn.fit_lmnn(x, y, k=3, max_iter=10, learn_rate=1e-5)
    ref = ml.LMNN(n_neighbors=3, init="identity", max_iter=10, learn_rate=1e-5,
                  regularization=0.5).fit(x, y)
    np.testing.assert_allclose(ours.components, ref.components_, atol=1e-5)


def test_lmnn_takes_metric_learn_s_fifty_steps_at_least():
    """LMNN stops when a step changes its objective by less than ``tol``, but not before
    metric-learn's ``min_iter`` (50) steps: a small set whose second step changed it by little
    stopped there, far from its minimum."""
    x = smoothing.standardize(np.random.default_rng(0).standard_normal((6, 2)))
    result = lmnn.fit_lmnn(x, np.arange(6) % 2, 1, k=1)  # the mutant stopped after 2 steps
    assert result.iterations > 50


def test_lmnn_refuses_features_whose_objective_overflows():
    """Unstandardised features of ~1e19 overflow float32's squared distances: refused with what
    to do, rather than a map of NaN components."""
    x = smoothing.standardize(np.random.default_rng(0).standard_normal((12, 3)))
    with pytest.raises(InputError, match="the LMNN objective became non-finite; standardise the "
                                         "features"):
        lmnn.fit_lmnn(x * 1e19, np.arange(12) % 2, k=2, max_iter=60)


def test_lmnn_needs_enough_per_class():
    """k target neighbours need k others of a track's class: a class of exactly k would take
    each track as its own neighbour."""
    with pytest.raises(InputError, match="more than 3 tracks"):
        lmnn.target_neighbors(np.zeros((5, 2)), np.array([0, 0, 0, 1, 1]), 3)
    with pytest.raises(InputError, match="more than 3 tracks.*the smallest class has 3"):
        lmnn.target_neighbors(np.zeros((7, 2)), np.array([0, 0, 0, 0, 1, 1, 1]), 3)
    found = lmnn.target_neighbors(np.arange(8.0)[:, None], np.array([0] * 4 + [1] * 4), 3)
    assert not np.any(found == np.arange(8)[:, None])
    # k = 0 learnt nothing (no pull: the identity back, objective 0, nothing said); -1 and
    # 1.5 were NumPy's errors
    for k in (0, -1, 1.5, "3"):
        with pytest.raises(InputError, match=f"k = {k!r} target neighbours; expected a whole"):
            lmnn.fit_lmnn(np.zeros((8, 2)), np.array([0] * 4 + [1] * 4), k=k)


def test_lmnn_target_neighbours_at_equal_distances_are_the_earlier_tracks():
    """Ties go to the earlier track, the same on every CPU: NumPy's default argsort (metric-learn's)
    leaves the order of ties open (rows of over 16 values: by CPU). 40 points of a class on a
    3x3 grid tie often; the reference ranks each point's others by (distance, index)."""
    x = np.random.default_rng(0).integers(0, 3, (40, 2)).astype(np.float64)
    labels = np.zeros(40, int)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    ranked = np.array([np.lexsort((np.arange(40), row)) for row in dist])
    np.testing.assert_array_equal(lmnn.target_neighbors(x, labels, 5), ranked[:, :5])


def test_knn_smoothing_uses_original_labels_of_others():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((30, 5))
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]
    smoothed = smoothing.knn_smooth(features, targets, k=4)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, atol=1e-6)
    for i in range(30):  # brute force: the 4 nearest other rows' one-hot labels
        d = np.linalg.norm(features - features[i], axis=1)
        d[i] = np.inf
        np.testing.assert_allclose(smoothed[i], targets[np.argsort(d)[:4]].mean(0), atol=1e-6)
    clustered = np.repeat(np.eye(3) * 100, 10, axis=0) + rng.standard_normal((30, 3))
    onehot = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    np.testing.assert_array_equal(smoothing.knn_smooth(clustered, onehot, 5), onehot)


def test_smoothing_measures_distances_between_standardised_features():
    """Features are z-scored over the training tracks before the distances (scikit-learn's
    StandardScaler as the reference): MFCC 0, in the tens, would otherwise choose the
    neighbours alone. A feature constant over them (std 0) is centred and scaled by 1, as
    StandardScaler does: divided by its std of 0 it would make every distance NaN."""
    StandardScaler = require("sklearn.preprocessing").StandardScaler
    rng = np.random.default_rng(2)
    features = rng.standard_normal((40, 6)) * [60.0, 1, 1, 1, 1, 0] + [-300.0, 5, 0, 0, 0, 7]
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    config = smoothing.SmoothingConfig("knn", k=5)
    got = smoothing.smooth_labels(features, targets, config)
    want = smoothing.knn_smooth(StandardScaler().fit_transform(features), targets, 5)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, smoothing.knn_smooth(features, targets, 5))  # the case is met


def test_smoothing_over_more_neighbours_than_other_tracks_is_refused():
    """k was cut to the tracks less one: each of 6 tracks of two classes averaged over the 5
    others, which gave every track its other class (0.4 against 0.6), and nothing was said."""
    features = np.random.default_rng(0).standard_normal((6, 4))
    targets = np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1, 1]]
    with pytest.raises(InputError, match="k = 10 needs more than 10 training tracks; there are 6"):
        smoothing.smooth_labels(features, targets, smoothing.SmoothingConfig("knn", k=10))
    # k = 6 of 6 tracks took each track's own row (its distance infinite) as its last
    # neighbour: every track got the same target, the mean of all
    with pytest.raises(InputError, match="k = 6 needs more than 6 training tracks; there are 6"):
        smoothing.knn_smooth(features, targets, 6)
    assert smoothing.knn_smooth(features, targets, 5).shape == (6, 2)
    # k = 0 averaged no neighbours' labels: NaN targets; 2.5 was NumPy's slicing error
    # (fit_head's option check refuses both first, in like words)
    # a string is named as one, as LMNN names it ('3', not 3)
    for k in (0, 2.5, "3"):
        with pytest.raises(InputError, match=f"with k = {k!r}; expected a whole number >= 1"):
            smoothing.knn_smooth(features, targets, k)


def test_smoothing_gives_lmnn_the_settings_asked_for(wine, monkeypatch):
    """Each ``lmnn_*`` setting reaches LMNN, as the head's JSON records them: one dropped on the
    way would train on another map than the one recorded."""
    import inspect

    x, y = wine
    given = {}
    fit = lmnn.fit_lmnn

    def recorded(*args, **kwargs):
        given.update(inspect.signature(fit).bind(*args, **kwargs).arguments)
        return fit(*args, **kwargs)

    monkeypatch.setattr(lmnn, "fit_lmnn", recorded)
    smoothing.smooth_labels(x, np.eye(3, dtype=np.float32)[y], smoothing.SmoothingConfig(
        "lmnn", k=5, lmnn_k=4, lmnn_components=3, lmnn_push=0.2, lmnn_max_iter=60))
    assert {name: given[name] for name in ("n_components", "k", "push", "max_iter")} == {
        "n_components": 3, "k": 4, "push": 0.2, "max_iter": 60}


def test_smoother_sees_only_training_tracks(wine):
    x, y = wine
    targets = np.eye(3, dtype=np.float32)[y]
    smooth = smoothing.smoother(x, targets, smoothing.SmoothingConfig(
        "lmnn", k=5, lmnn_components=4, lmnn_max_iter=60))
    train = np.arange(0, len(x), 2)
    out = smooth(train)
    assert out.shape == (len(train), 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    # the same tracks smoothed alone give the same result: nothing leaks from the others
    alone = smoothing.smooth_labels(x[train], targets[train], smoothing.SmoothingConfig(
        "lmnn", k=5, lmnn_components=4, lmnn_max_iter=60))
    np.testing.assert_array_equal(out, alone)


def test_lmnn_settings_without_its_method_are_warned_of():
    """SmoothingConfig(lmnn_components=64), as the README once wrote it, kept method "none": the
    head trained without smoothing, unsaid."""
    from jaxmir.errors import JaxmirWarning
    from jaxmir.train.smoothing import SmoothingConfig

    with pytest.warns(JaxmirWarning, match=r"lmnn_components=\.\.\.\) with method='none': LMNN"):
        SmoothingConfig(lmnn_components=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothingConfig("lmnn", lmnn_components=64)
        SmoothingConfig("knn", k=5)
    # an array there raised NumPy's "truth value ... is ambiguous"; fit_head refuses it by name
    with pytest.warns(JaxmirWarning, match="lmnn_components"):
        SmoothingConfig("knn", lmnn_components=np.array([64, 32]))
