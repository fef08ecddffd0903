"""Heads and VGGish through the audio pipeline, against TensorFlow on the same patches; `jaxmir
info`."""

from __future__ import annotations

import numpy as np
import pytest

import jaxmir
from conftest import assert_parity, require, run_tf, shared_fixture
from jaxmir import cli, pipeline


def tones(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    signal = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220, 440 * 1.5, 1800))
    return (signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def tf_patches(model, audio: np.ndarray) -> np.ndarray:
    """The patches jaxmir's pipeline cuts, built outside it: front-end frames indexed by the
    plan."""
    frames = np.asarray(model.features(audio, 16000))
    plan = pipeline.plan(model, audio.size, bucket=False)
    table = np.concatenate([np.zeros_like(frames[:1]), frames])
    return table[plan.index[:plan.n_patches]]


def test_head_on_backbone_from_audio(tmp_path, musicnn_graphs):
    require("tensorflow")
    from tools import tf_graphs
    head = tmp_path / "mood_happy-msd-musicnn-1.pb"
    tf_graphs.write_graph(tf_graphs.embedding_head_graph(tf_graphs.random_weights(3)), str(head))
    model = jaxmir.load(head, backbone="msd-musicnn")
    audio = tones(9.0)
    ours = np.asarray(model.predict(audio, 16000))
    patches = tf_patches(model, audio)
    assert ours.shape == (patches.shape[0], 2) and patches.shape[0] == 5
    embeddings = run_tf(musicnn_graphs / "msd-musicnn-1.pb", {"model/Placeholder": patches},
                        ["model/dense/BiasAdd"])[0]
    reference = run_tf(head, {"model/Placeholder": embeddings}, ["model/Softmax"])[0]
    assert_parity("model/Softmax", reference, ours, probabilities=True)


def test_vggish_classifier_from_audio(tmp_path):
    require("tensorflow")
    from tools import tf_graphs
    path = tmp_path / "genre-vggish-audioset.pb"
    tf_graphs.write_graph(tf_graphs.vggish_graph(tf_graphs.random_weights(4),
                                                 widths=(16, 32, 64, 128),
                                                 fc=(256, 256, 128),
                                                 classifier=[(100, "relu"), (3, None)]),
                          str(path))
    model = jaxmir.load(path)
    audio = tones(4.0, seed=1)
    ours = model.predict(audio, 16000, output=["predictions", "model/vggish/embeddings"])
    patches = tf_patches(model, audio)
    reference = run_tf(path, {"model/Placeholder": patches},
                       ["model/Softmax", "model/vggish/embeddings"])
    assert_parity("model/Softmax", reference[0], ours["predictions"], probabilities=True)
    assert_parity("embeddings", reference[1], ours["model/vggish/embeddings"])


def test_head_alone_cannot_take_audio(tmp_path):
    require("tensorflow")
    from tools import tf_graphs
    head = tmp_path / "head.pb"
    tf_graphs.write_graph(tf_graphs.embedding_head_graph(tf_graphs.random_weights(3)), str(head))
    with pytest.raises(jaxmir.InputError, match="embedding head.*backbone"):
        jaxmir.load(head).predict(tones(4.0), 16000)


FIXTURES = {
    "genre_dortmund_musicnn_msd.pb": ["architecture: musicnn", "[batch, 187, 96]",
                                      "model/Sigmoid [batch, 9]", "803,038", "no metadata JSON"],
    "small_vggish_init.pb": ["architecture: vggish", "[batch, 96, 64]", "model/Sigmoid [batch, 2]",
                             "conv3x3 8 relu pool2x2", "dense 128 -> relu"],
    "vgg4.pb": ["architecture: vgg", "[batch, 128, 128]", "model/Softmax [batch, 4]", "elu BN"],
    "emomusic-msd-musicnn-1.pb": ["architecture: head", "flatten_in_input [batch, 200]",
                                  "dense_out [batch, 2]", "BN -> dense 2",
                                  # a regression head: tag printed its values unranked, info
                                  # did not say so
                                  "dense_out [batch, 2]; values, not class scores"],
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_info_describes_the_fixtures(name, capsys):
    path = shared_fixture(f"essentia-models/{name}")
    assert cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    for expected in FIXTURES[name]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert ("values, not class scores" in text) == name.startswith("emomusic")


def test_info_describes_replicas(tmp_path, capsys):
    require("tensorflow")
    from tools import tf_graphs
    weights = tf_graphs.random_weights(2)
    graphs = {
        "audioset-vggish-3.pb": (tf_graphs.vggish_graph(weights, widths=(8, 16, 32, 64),
                                                        fc=(32, 32, 128)),
                                 ["architecture: vggish", "model/vggish/embeddings [batch, 128]",
                                  "dense 128", "fc2"]),
        "msd-musicnn-big.pb": (tf_graphs.musicnn_graph(weights, midend=512, backend=500),
                               ["mid-end: 3 x conv 7 (512 filters)", "dense 500", "rock, pop"]),
        "genre-vgg-msd.pb": (tf_graphs.vgg_graph(weights, classifier=[(100, "relu"), (4, None)],
                                                 output="Softmax"),
                             ["architecture: vgg", "dense 100 -> relu -> dense 4 -> softmax"]),
        "moods_mirex-msd-musicnn-1.pb": (tf_graphs.embedding_head_graph(weights, classes=5,
                                                                        partitioned=True),
                                         ["architecture: head", "serving_default_model_Placeholder",
                                          "PartitionedCall [batch, 5]"]),
    }
    for name, (graph, expected) in graphs.items():
        tf_graphs.write_graph(graph, str(tmp_path / name))
        assert cli.main(["info", str(tmp_path / name)]) == 0
        text = capsys.readouterr().out
        for line in expected:
            assert line in text, f"{name}: {line!r} not in:\n{text}"
    # a VGG's pools read from its graph as from the shipped weights (pool5 [batch, 2, 128])
    built, shipped = jaxmir.load(tmp_path / "genre-vgg-msd.pb"), jaxmir.load("msd-vgg")
    for pool in ("pool1", "pool2", "pool3", "pool4", "pool5"):
        assert built.resolve_output(pool) == shipped.resolve_output(pool), pool


def test_cli_tags_with_a_head_on_its_backbone(tmp_path, capsys):
    require("tensorflow")
    import json as json_module

    import soundfile
    from tools import tf_graphs
    head = tmp_path / "mood_party-msd-musicnn-1.pb"
    tf_graphs.write_graph(tf_graphs.embedding_head_graph(tf_graphs.random_weights(8)), str(head))
    head.with_suffix(".json").write_text(json_module.dumps(
        tf_graphs.essentia_metadata(["non_party", "party"], "model/Softmax", "msd-musicnn-1")))
    wav = tmp_path / "song.wav"
    soundfile.write(wav, tones(5.0), 16000)
    assert cli.main(["tag", str(wav), "--model", str(head), "--format", "json",
                     "--no-progress", "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "using the backbone its metadata names: msd-musicnn" in captured.err
    result = json_module.loads(captured.out)
    # TensorFlow's head on msd-musicnn's embeddings of the same signal: the backbone the JSON
    # names (mtt-musicnn's, the other shipped MusiCNN, are other numbers)
    embeddings = jaxmir.load("msd-musicnn").predict(tones(5.0), 16000, output="embeddings")
    [want] = run_tf(head, {"model/Placeholder:0": embeddings}, ["model/Softmax:0"])
    [found] = result["files"]
    assert result["labels"] == ["non_party", "party"]
    assert_parity("head on msd-musicnn", want, np.asarray(found["taggram"]), probabilities=True)
    assert cli.main(["tag", str(wav), "--model", "msd-vgg", "--backbone", "msd-musicnn",
                     "--no-progress", "--no-cache"]) != 0
    assert "--backbone is for embedding heads" in capsys.readouterr().err
    assert cli.main(["info", str(head), "--backbone", "mtt-musicnn"]) == 0
    assert "architecture: composed" in capsys.readouterr().out
