"""From audio file to tags, against Essentia itself.

* Essentia's own regression values (its unit tests) on its test audio;
* Essentia 2.1-beta6 run on four inputs (``essentia-reference/``): its 16-kHz
  signal in, its per-patch MusiCNN predictions and embeddings out.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

import jaxmir
from conftest import essentia_python, shared_fixture

# test_tensorflowpredictmusicnn.py: genre_dortmund_musicnn_msd.pb on vignesh.wav, first patch
VIGNESH_FIRST_PATCH = [0.00893995, 0.650628, 0.0017924, 0.10297492, 0.15139213, 0.13975027,
                       0.07960042, 0.01067388, 0.04935676]
# test_tensorflowpredictvggish.py: small_vggish_init.pb on hiphop.mp3, patchHopSize=0, mean over
# patches
HIPHOP_VGGISH_MEAN = [0.49044114, 0.50241125]
REFERENCES = ["synth_sines_16k_mono", "chirp_44k1_stereo",
              "joram-moments_of_clarity-08-solipsism-59-88", "TRWJAZW128F42760DD_test"]


@pytest.fixture(scope="module")
def msd_musicnn():
    return jaxmir.load("msd-musicnn")


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


def test_vignesh_genre_dortmund_first_patch():
    model = jaxmir.load(shared_fixture("essentia-models/genre_dortmund_musicnn_msd.pb"))
    audio = jaxmir.load_audio(shared_fixture("audio/vignesh.wav"))
    found = np.asarray(model.predict(audio, 16000))
    assert found.shape == (1, 9)  # 3.09 s: 1 patch
    error = relative_error(found[0], VIGNESH_FIRST_PATCH)
    print(f"vignesh.wav, genre_dortmund: max relative error {error:.3g}")  # measured 1.03e-5
    assert error < 1e-4


def test_hiphop_small_vggish_mean():
    model = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    audio = jaxmir.load_audio(shared_fixture("audio/hiphop.mp3"))
    found = np.asarray(model.predict(audio, 16000, patch_hop=96))
    assert found.shape == (5, 2)  # 5.28 s: 530 frames, patches of 96 every 96
    # patchHopSize=0 in Essentia means "the patch size": the same patches
    np.testing.assert_array_equal(found, np.asarray(model.predict(audio, 16000, patch_hop=0)))
    error = relative_error(found.mean(axis=0), HIPHOP_VGGISH_MEAN)
    # measured 1.5e-3
    print(f"hiphop.mp3, small_vggish_init: relative error of the mean {error:.3g}")
    assert error < 1e-2


ESSENTIA_VGGISH = """
import json, sys
import numpy as np
import essentia
essentia.log.warningActive = False
import essentia.standard as es
audio_path, graph, out = sys.argv[1:4]
audio = es.MonoLoader(filename=audio_path, sampleRate=16000)()
found = {str(hop): np.asarray(es.TensorflowPredictVGGish(graphFilename=graph, patchHopSize=hop)(
    audio), np.float64).tolist() for hop in (0, 48)}
open(out, "w").write(json.dumps(found))
"""


def test_hiphop_small_vggish_equals_the_essentia_wheel(tmp_path):
    """The values above are from Essentia's unit tests, of another build: the wheel itself is
    1.5e-3 from them, as jaxmir is. Against the wheel run here (MonoLoader and
    TensorflowPredictVGGish, patch for patch): float32 probabilities, ~1e-7."""
    script, out = tmp_path / "vggish.py", tmp_path / "found.json"
    script.write_text(ESSENTIA_VGGISH)
    graph, audio_path = (shared_fixture("essentia-models/small_vggish_init.pb"),
                         shared_fixture("audio/hiphop.mp3"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)  # Essentia alone: no jaxmir, no TensorFlow but its own
    done = subprocess.run([essentia_python(), str(script), str(audio_path), str(graph), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = {int(hop): np.asarray(values) for hop, values in json.loads(out.read_text()).items()}
    model = jaxmir.load(graph)
    audio = jaxmir.load_audio(audio_path)
    for hop, expected in wheel.items():
        found = np.asarray(model.predict(audio, 16000, patch_hop=hop), np.float64)
        assert found.shape == expected.shape, hop
        error = float(np.max(np.abs(found - expected)))
        print(f"hiphop.mp3, small_vggish_init, patchHopSize={hop}: {found.shape[0]} patches, "
              f"max abs difference {error:.3g}")
        assert error <= 1e-5  # probabilities; the network alone is ~1e-6 from TensorFlow


@pytest.mark.parametrize("name", REFERENCES)
def test_msd_musicnn_equals_essentia(msd_musicnn, name):
    ref = np.load(shared_fixture(f"essentia-reference/{name}.npz"))
    audio = ref["audio_16k"]
    out = msd_musicnn.predict(audio, 16000, output=["predictions", "model/dense/BiasAdd"])
    sigmoid, embeddings = np.asarray(out["predictions"]), np.asarray(out["model/dense/BiasAdd"])
    want_sigmoid, want_embeddings = (ref["musicnn_predict_sigmoid"],
                                     ref["musicnn_predict_embeddings"])
    assert sigmoid.shape == want_sigmoid.shape and embeddings.shape == want_embeddings.shape
    sigmoid_error = float(np.abs(sigmoid - want_sigmoid).max())
    scale = float(np.abs(want_embeddings).max())
    embedding_error = float(np.abs(embeddings - want_embeddings).max())
    print(f"{name}: {sigmoid.shape[0]} patches, sigmoid max abs "
          f"error {sigmoid_error:.3g}, embeddings max abs error "
          f"{embedding_error:.3g} ({embedding_error / scale:.3g} of max |value|)")
    # measured: sigmoid 4.3e-7 .. 1.03e-5, embeddings 2.2e-6 .. 5.9e-6 of the max magnitude
    assert sigmoid_error < 1e-4
    assert embedding_error < 1e-4 * scale
    # the tags a user sees: same order of the averaged predictions, top 5
    np.testing.assert_array_equal(np.argsort(-sigmoid.mean(0))[:5],
                                  np.argsort(-want_sigmoid.mean(0))[:5])


def test_audio_file_through_loader_equals_essentias_signal(msd_musicnn):
    """The 44.1-kHz stereo chirp read from its file: Essentia's MonoLoader signal, Essentia's
    tags."""
    ref = np.load(shared_fixture("essentia-reference/chirp_44k1_stereo.npz"))
    audio = jaxmir.load_audio(shared_fixture("essentia-reference/audio/chirp_44k1_stereo.wav"))
    assert audio.shape == ref["audio_16k"].shape
    np.testing.assert_allclose(audio, ref["audio_16k"], rtol=0, atol=1e-5)
    found = np.asarray(msd_musicnn.predict(audio, 16000))
    assert float(np.abs(found - ref["musicnn_predict_sigmoid"]).max()) < 1e-4
