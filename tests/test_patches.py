"""jaxmir.patches against Essentia's VectorRealToTensor rules and its recorded patch positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_fixture
from jaxmir.errors import InputError
from jaxmir.frontends import (MUSICNN_PATCH_HOP, MUSICNN_PATCH_SIZE, VGGISH_PATCH_HOP,
                              VGGISH_PATCH_SIZE)
from jaxmir.patches import make_patches, patch_starts

REFERENCES = ["synth_sines_16k_mono", "chirp_44k1_stereo",
              "joram-moments_of_clarity-08-solipsism-59-88", "TRWJAZW128F42760DD_test"]


def numbered(n_frames: int, n_bands: int = 3) -> np.ndarray:
    """Frame f holds the value f in every band, so a patch shows which frames it took."""
    return np.repeat(np.arange(n_frames, dtype=np.float32)[:, None], n_bands, axis=1)


@pytest.mark.parametrize("name", REFERENCES)
def test_patch_starts_match_essentia(name):
    ref = np.load(shared_fixture(f"essentia-reference/{name}.npz"), allow_pickle=False)
    for frontend, size, hop in [("musicnn", MUSICNN_PATCH_SIZE, MUSICNN_PATCH_HOP),
                                ("vggish", VGGISH_PATCH_SIZE, VGGISH_PATCH_HOP)]:
        n_frames = ref[f"{frontend}_bands"].shape[0]
        expected = ref[f"{frontend}_patch_starts"]
        np.testing.assert_array_equal(patch_starts(n_frames, size, hop, "discard"), expected)
        patches = make_patches(ref[f"{frontend}_bands"], size, hop)
        assert patches.shape == (len(expected), size, ref[f"{frontend}_bands"].shape[1])
        np.testing.assert_array_equal(patches[-1],
                                      ref[f"{frontend}_bands"][expected[-1]:expected[-1] + size])


def test_discard_counts():
    # floor((F - P) / hop) + 1 complete patches, nothing below P
    for n_frames in range(0, 400):
        expected = (n_frames - 187) // 93 + 1 if n_frames >= 187 else 0
        assert len(patch_starts(n_frames, 187, 93)) == expected
    # Essentia's own worked example: 4.5 s -> 283 frames -> 2 MusiCNN patches
    assert list(patch_starts(283, 187, 93)) == [0, 93]


def test_hop_zero_means_patch_size():
    np.testing.assert_array_equal(patch_starts(300, 96, 0), patch_starts(300, 96, 96))
    np.testing.assert_array_equal(patch_starts(300, 96, 0), [0, 96, 192])


def test_a_hop_given_as_a_zero_dimensional_array_is_taken():
    """librosa.time_to_frames(1, ...) gives array(61), as the README's musicnn recipe uses it:
    refused ("patch_hop must be an integer >= 0, got array(61)")."""
    assert np.array_equal(patch_starts(1000, MUSICNN_PATCH_SIZE, np.array(61)),
                          patch_starts(1000, MUSICNN_PATCH_SIZE, 61))
    with pytest.raises(InputError, match="patch_hop must be an integer"):
        patch_starts(1000, MUSICNN_PATCH_SIZE, np.array(61.0))
    from jaxmir.collection import Options  # collections too, recorded as a Python int
    assert type(Options(patch_hop=np.array(61)).patch_hop) is int
    assert type(Options(patch_hop=np.int64(61)).patch_hop) is int


def test_repeat_builds_cyclic_last_patch():
    frames = numbered(200)
    patches = make_patches(frames, 187, 93, last_patch="repeat")
    # one complete patch at 0; 200 - 93 = 107 frames remain after its hop
    assert list(patch_starts(200, 187, 93, "repeat")) == [0, 93]
    assert patches.shape == (2, 187, 3)
    expected_last = 93 + np.arange(187) % 107
    np.testing.assert_array_equal(patches[1, :, 0], expected_last)
    # a short remainder is repeated many times
    patches = make_patches(numbered(190), 187, 93, last_patch="repeat")
    np.testing.assert_array_equal(patches[1, :, 0], 93 + np.arange(187) % 97)


def test_repeat_exact_fit_adds_tail_patch_of_already_covered_frames():
    # 187 + 93 = 280 frames: two complete patches; 280 - 2*93 = 94 frames remain -> a third patch
    starts = patch_starts(280, 187, 93, "repeat")
    assert list(starts) == [0, 93, 186]
    # non-overlapping hop with an exact fit leaves nothing
    assert list(patch_starts(374, 187, 187, "repeat")) == [0, 187]


def test_repeat_with_fewer_frames_than_a_patch():
    patches = make_patches(numbered(5), 96, 93, last_patch="repeat")
    assert patches.shape == (1, 96, 3)
    np.testing.assert_array_equal(patches[0, :, 0], np.arange(96) % 5)
    # one frame short of a patch (an IndexError at the bound's off-by-one), alone and after one
    patches = make_patches(numbered(186), 187, 93, last_patch="repeat")
    np.testing.assert_array_equal(patches[:, :, 0], [np.arange(187) % 186])
    patches = make_patches(numbered(279), 187, 93, last_patch="repeat")
    np.testing.assert_array_equal(patches[:, :, 0], [np.arange(187), 93 + np.arange(187) % 186])


def test_too_short_raises_with_frames_and_seconds():
    with pytest.raises(InputError) as err:
        make_patches(numbered(100), 187, 93, frames_per_second=62.5)
    message = str(err.value)
    assert "100 frames (1.60 s)" in message and "187 frames (2.99 s)" in message
    with pytest.raises(InputError, match="0 frames"):
        make_patches(numbered(0), 96, 93, last_patch="repeat")


def test_pad_zero_and_repeat():
    frames = numbered(10) + 1.0
    zero = make_patches(frames, 96, 93, pad="zero")
    assert zero.shape == (1, 96, 3)
    np.testing.assert_array_equal(zero[0, :10], frames)
    assert not zero[0, 10:].any()
    repeat = make_patches(frames, 96, 93, pad="repeat")
    np.testing.assert_array_equal(repeat[0, :, 0], 1.0 + np.arange(96) % 10)
    # long enough inputs are never padded
    np.testing.assert_array_equal(make_patches(numbered(200), 96, 93, pad="zero"),
                                  make_patches(numbered(200), 96, 93))
    assert make_patches(numbered(0), 96, 93, pad="zero").shape == (1, 96, 3)
    with pytest.raises(InputError, match="at least one frame"):
        make_patches(numbered(0), 96, 93, pad="repeat")


def test_leading_batch_axes_and_jax_arrays():
    frames = np.random.default_rng(0).standard_normal((2, 3, 300, 4)).astype(np.float32)
    patches = make_patches(frames, 96, 93)
    assert isinstance(patches, np.ndarray) and patches.shape == (2, 3, 3, 96, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(patches[i, j], make_patches(frames[i, j], 96, 93))
    as_jax = make_patches(jnp.asarray(frames), 96, 93)
    assert isinstance(as_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(as_jax), patches)
    jitted = jax.jit(lambda f: make_patches(f, 96, 93, last_patch="repeat"))(jnp.asarray(frames))
    np.testing.assert_array_equal(np.asarray(jitted),
                                  make_patches(frames, 96, 93, last_patch="repeat"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch_size=0, patch_hop=0), "patch_size"),
    (dict(patch_size=96, patch_hop=97), "larger than patch_size"),
    (dict(patch_size=96, patch_hop=-1), "patch_hop"),
    (dict(patch_size=96, patch_hop=93, last_patch="pad"), "last_patch"),
    (dict(patch_size=96, patch_hop=93, pad="edge"), "pad"),
    (dict(patch_size=96.0, patch_hop=93), "patch_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_patches(numbered(300), **kwargs)


def test_bad_frames_shape():
    with pytest.raises(InputError, match="n_frames, n_bands"):
        make_patches(np.zeros(300, np.float32), 96, 93)
