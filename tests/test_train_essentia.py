"""An exported head runs in Essentia (TensorflowPredict2D) and in ``jaxmir tag``.

Essentia bundles its own TensorFlow, so it runs in a subprocess; data goes
through .npy files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

import jaxmir

from conftest import child_env, essentia_python
from jaxmir.train import embeddings, fit, synthetic
from jaxmir.train.export import export_head

ESSENTIA = textwrap.dedent("""
    import json, sys
    import numpy as np
    from essentia.standard import MonoLoader, TensorflowPredictMusiCNN, TensorflowPredict2D
    args = json.loads(sys.argv[1])
    audio = MonoLoader(filename=args["audio"], sampleRate=16000, resampleQuality=4)()
    emb = TensorflowPredictMusiCNN(graphFilename=args["backbone"],
                                   output="model/dense/BiasAdd")(audio)
    pred = TensorflowPredict2D(graphFilename=args["head"], input="model/Placeholder",
                               output="model/Softmax")(emb)
    np.save(args["out"] + "_emb.npy", np.asarray(emb, np.float32))
    np.save(args["out"] + "_pred.npy", np.asarray(pred, np.float32))
""")


def test_exported_head_runs_in_essentia_and_jaxmir_tag(tmp_path, musicnn_graphs):
    python = essentia_python()  # never imported here: it bundles its own TensorFlow
    data = synthetic.write_dataset(tmp_path / "data", classes=("pads", "drums"), per_class=3,
                                   seconds=3.5)
    paths = sorted(str(p) for p in data.rglob("*.wav"))
    backbone = jaxmir.load("msd-musicnn")
    tracks, _ = embeddings.extract_embeddings(backbone, "msd-musicnn", paths,
                                              "model/dense/BiasAdd", cache=False)
    targets = np.eye(2, dtype=np.float32)[[0 if "drums" in p else 1 for p in paths]]
    head = fit.train_head(tracks, targets, "single", ("drums", "pads"), fit.TrainConfig(epochs=5))
    out = export_head(head.params, "softmax", head.classes, tmp_path / "timbre", "msd-musicnn",
                      (187, 96), "model/dense/BiasAdd")

    song = tmp_path / "song.wav"
    import soundfile

    soundfile.write(song, synthetic.synth("drums", 8.0, np.random.default_rng(5)), 16000)
    args = {"audio": str(song), "backbone": str(musicnn_graphs / "msd-musicnn-1.pb"),
            "head": str(out[".pb"]), "out": str(tmp_path / "essentia")}
    run = subprocess.run([python, "-c", ESSENTIA, json.dumps(args)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    emb = np.load(tmp_path / "essentia_emb.npy", allow_pickle=False)
    pred = np.load(tmp_path / "essentia_pred.npy", allow_pickle=False)
    assert emb.shape[1] == 200 and pred.shape == (len(emb), 2)
    ours = head.predict(emb)
    # probabilities from two float32 runs of a 200x100x2 MLP: rounding ~1e-7
    assert np.max(np.abs(ours - pred)) <= 1e-5
    loaded = jaxmir.load(out[".pb"])
    assert np.max(np.abs(np.asarray(loaded.apply(emb)["predictions"]) - pred)) <= 1e-5

    tagged = subprocess.run([sys.executable, "-m", "jaxmir", "tag", str(song), "--model",
                             str(out[".pb"]), "--format", "json"], capture_output=True, text=True,
                            timeout=300, env=child_env(), cwd=tmp_path)
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    report = json.loads(tagged.stdout)
    [result] = report["files"]
    assert report["labels"] == ["drums", "pads"]
    # jaxmir's backbone and Essentia's graph of the same checkpoint: embeddings within ~6e-6 of
    # their largest (the README's parity table), probabilities through the head within 1e-5
    np.testing.assert_allclose(np.asarray(result["taggram"]), pred, rtol=0, atol=1e-4)
