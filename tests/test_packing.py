"""Patches of many files packed into fixed-size calls: the outputs of Model.predict, file by
file."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import jaxmir
from jaxmir.collection import compute
from jaxmir.collection.compute import Decoded, Options
from jaxmir.collection.inputs import Source
from jaxmir.collection.packing import Packer
from jaxmir.errors import InputError
from jaxmir.stream import MAX_BATCH, file_batch
from conftest import EMBEDDINGS_RTOL, ROOT, TAGS_ATOL

# 16-kHz signals: too short for a patch (1.0 s, 2.9 s), one patch, a few, 12.3 s (7 patches: one
# padded run), 31 s (19: two runs, three left over) and 70 s (46: five runs, a padded run of 6),
# so that runs, padded runs and packs all occur and packs mix files.
SECONDS = (3.5, 70.0, 1.0, 5.0, 31.0, 2.9, 12.3)

# Packed calls batch a file's left-over patches with other files' where Model.predict runs them
# one by one: TAGS_ATOL and EMBEDDINGS_RTOL (conftest) bound the other summation order.


@pytest.fixture(scope="module")
def model():
    return jaxmir.load("msd-musicnn")


@pytest.fixture(scope="module")
def signals() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    found = []
    for number, seconds in enumerate(SECONDS):
        t = np.arange(int(seconds * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * (110 + 55 * number) * t)
        found.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return found


def _items(signals) -> list[Decoded]:
    return [Decoded(Source(f"track-{n}.wav", 0, 0), audio.copy())
            for n, audio in enumerate(signals)]


@pytest.mark.parametrize("options", [
    Options(),
    Options(last_patch="repeat", pad="zero"),
    Options(output="embeddings", pad="repeat", patch_hop=0),
    Options(batch=3),
], ids=["essentia-defaults", "repeat-last-zero-pad", "embeddings-no-overlap", "calls-of-3"])
def test_packed_calls_equal_predict(model, signals, options, monkeypatch):
    batches = []

    class RecordingPacker(Packer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            batches.append(self.batch)

    carried = []  # (run, first patch, whether a valid carry came in)
    run_call = compute.run_call

    def recording_run_call(replica, packer, call, taps, carry=None):
        valid = [bool(leaf) for leaf in jax.tree_util.tree_leaves(carry) if leaf.dtype == bool]
        carried.append((call.run, call.owners[0][1], all(valid) if valid else False))
        return run_call(replica, packer, call, taps, carry)

    monkeypatch.setattr(compute, "Packer", RecordingPacker)
    monkeypatch.setattr(compute, "run_call", recording_run_call)
    found = {item.source.path: outcome
             for item, outcome in compute.analyze_stream(model, _items(signals), options)}
    assert batches == [options.batch or file_batch(model)]  # None: the model's (8 for MusiCNN)
    # a file's runs after its first take the timbral rows they share from the run before
    shares = options.patch_hop != 0 and batches[0] > 1
    assert [valid for _, _, valid in carried] == [run and first > 0 and shares
                                                  for run, first, _ in carried]
    assert sum(valid for _, _, valid in carried) >= (4 if shares else 0)
    assert len(found) == len(signals)
    output = options.for_command("tag").output  # unnamed: the predictions
    for number, audio in enumerate(signals):
        outcome = found[f"track-{number}.wav"]
        try:
            want = model.predict(audio, 16000, output=output, patch_hop=options.patch_hop,
                                 last_patch=options.last_patch, pad=options.pad)
        except InputError as err:
            assert isinstance(outcome, str) and str(err) in outcome
            continue
        got = outcome[output]
        assert got.shape == want.shape
        if output == "predictions":
            np.testing.assert_allclose(got, want, rtol=0, atol=TAGS_ATOL)
        else:
            np.testing.assert_allclose(got, want, rtol=0,
                                       atol=EMBEDDINGS_RTOL * float(np.abs(want).max()))


def test_zero_padding_packed_after_other_files_is_zeros(model):
    """A short file's zero padding (``pad="zero"``) packed behind another file's patch read the
    first frame of its own segment, which holds audio when its file starts loud: embeddings off
    by 19 on a scale of 10. Loud noise everywhere, so that no frame is silence by chance."""
    rng = np.random.default_rng(1)
    signals = [(0.5 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
               for seconds in (3.7, 1.0, 0.8)]
    options = Options(pad="zero", output="embeddings")
    found = {item.source.path: outcome
             for item, outcome in compute.analyze_stream(model, _items(signals), options)}
    for number, audio in enumerate(signals):
        want = model.predict(audio, 16000, output="embeddings", pad="zero")
        got = found[f"track-{number}.wav"]["embeddings"]
        np.testing.assert_allclose(got, want, rtol=0,
                                   atol=EMBEDDINGS_RTOL * float(np.abs(want).max()))


@pytest.mark.parametrize("batch", [0, -2, 2.5, True, MAX_BATCH + 1])
def test_batch_must_be_a_positive_integer_up_to_the_bound(batch):
    """A batch beyond the bound was packed as asked: the last pack of a collection filled to it."""
    with pytest.raises(InputError, match=f"batch must be a positive integer up to {MAX_BATCH}"):
        Options(batch=batch)
    Options(batch=MAX_BATCH)


def test_the_readme_states_the_batch_bound():
    """The bound is the README's (a bound of 8192 passed every test)."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert re.search(rf"`--batch N` patches \([^)]*at most {MAX_BATCH};", readme)


def test_the_command_line_refuses_a_batch_beyond_the_bound(tmp_path, capsys):
    from jaxmir import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["tag", str(tmp_path), "-o", str(tmp_path / "t.parquet"), "--batch",
                  str(MAX_BATCH + 1)])
    assert stop.value.code == 2
    assert f"--batch: expected a whole number <= {MAX_BATCH}, got {MAX_BATCH + 1}" in \
        capsys.readouterr().err
    # the bound itself is the README's "at most": taken, as Options(batch=MAX_BATCH) is
    assert cli.build_parser().parse_args(["tag", str(tmp_path), "--batch",
                                          str(MAX_BATCH)]).batch == MAX_BATCH


def test_packs_mix_files_and_runs_keep_one_file(model, signals):
    packer = Packer(model)
    calls = []
    for number, audio in enumerate(signals):
        try:
            n_patches, made = packer.cut(number, audio)
        except InputError:
            continue
        calls.extend(made)
        assert n_patches >= 1
    calls.extend(packer.flush())
    assert packer.flush() == []
    runs = [call for call in calls if call.run]
    packs = [call for call in calls if not call.run]
    assert {len({key for key, _ in call.owners}) for call in runs} == {1}
    assert any(len({key for key, _ in call.owners}) > 1 for call in packs)
    # a file's last 5-7 patches make a padded run (the 12.3-s and 70-s tracks'), fewer go to packs
    assert sorted(len(call.owners) for call in runs if len(call.owners) < packer.batch) == [6, 7]
    # every patch exactly once; only the last pack has padding
    owners = [owner for call in calls for owner in call.owners]
    assert len(owners) == len(set(owners))
    assert [len(call.owners) < packer.batch for call in packs] \
        == [False] * (len(packs) - 1) + [True]
    # one shape per kind of call: two programs
    assert len({(call.run, call.audio.shape, call.index.shape) for call in calls}) == 2


def test_a_large_batch_pads_no_run_past_twice_its_patches(model, signals):
    """With ``--batch 64`` (a GPU's), a file's last patches make a padded run only when they fill
    more than half of it; fewer go to packs: at most about twice the patches are computed, where
    every file's tail used to be padded to 64 (a 31-s track: 19 patches in a call of 64)."""
    packer = Packer(model, batch=64)
    calls, useful = [], 0
    for number, audio in enumerate(signals):
        try:
            n_patches, made = packer.cut(number, audio)
        except InputError:
            continue
        useful += n_patches
        calls.extend(made)
    calls.extend(packer.flush())
    assert all(len(call.owners) > 32 for call in calls if call.run)
    assert len(calls) * packer.batch <= 2 * useful + packer.batch
    assert sum(len(call.owners) for call in calls) == useful


def test_the_last_pack_is_filled_with_silent_segments_to_a_whole_call(model, signals):
    """A collection's last pack has ``batch`` rows like every other (one program for all packs),
    its rows past the patches waiting reading silence."""
    packer = Packer(model)
    assert packer.cut("short", signals[0]) == (1, [])  # 3.5 s: one patch, waiting for a pack
    (call,) = packer.flush()
    assert call.owners == (("short", 0),) and not call.run
    assert call.index.shape == (packer.batch, packer.patch_size)
    assert call.audio.shape == (packer.batch * packer.segment,)
    assert call.audio[:packer.segment].any() and not call.audio[packer.segment:].any()


@pytest.mark.parametrize("seconds, tail", [(145.0, 32), (146.5, 33)])
def test_a_tail_of_more_than_half_a_run_makes_a_padded_run(model, seconds, tail):
    """``--batch 64``: a file's last 33 patches are a padded run; its last 32, half a run, are
    packed (as the module's rule says: more than half a run)."""
    packer = Packer(model, batch=64)
    n_patches, made = packer.cut(0, np.zeros(int(seconds * 16000), np.float32))
    assert n_patches == 64 + tail
    assert [len(call.owners) for call in made] == ([64] if tail == 32 else [64, 33])
    assert all(call.run for call in made)
    assert [len(call.owners) for call in packer.flush()] == ([32] if tail == 32 else [])


def test_a_failed_call_fails_only_its_files(model, signals, monkeypatch):
    run_call = compute.run_call

    def failing(replica, packer, call, taps, carry=None):
        if any(key == 4 for key, _ in call.owners):  # every call holding the 31-s track's patches
            raise MemoryError
        return run_call(replica, packer, call, taps, carry)

    monkeypatch.setattr(compute, "run_call", failing)
    outcomes = list(compute.analyze_stream(model, _items(signals), Options()))
    found = {item.source.path: outcome for item, outcome in outcomes}
    assert len(outcomes) == len(found)  # one outcome a file: not one per patch of a failed call
    failed = {path for path, outcome in found.items() if isinstance(outcome, str)}
    too_short = {"track-2.wav", "track-5.wav"}
    assert found["track-4.wav"] == "track-4.wav: out of memory"
    # the files packed with its last patches fail with it, the others are complete
    assert "track-4.wav" in failed and len(failed - too_short) >= 2
    assert len(found) == len(signals) and len(failed) < len(signals)
    for path, outcome in found.items():
        if path not in failed:
            assert outcome["predictions"].shape[0] >= 1


def test_a_model_that_shares_no_overlap_packs_a_file_s_tail():
    """A padded run gains something only where MusiCNN shares its patches' overlap: another
    model's last patches of a file (5 of 13 here) go to packs instead."""
    from conftest import shared_fixture

    model = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    packer = Packer(model, batch=8)
    audio = 0.1 * np.random.default_rng(1).standard_normal(int(12.2 * 16000)).astype(np.float32)
    n_patches, calls = packer.cut(0, audio)
    assert n_patches == 13 and [(call.run, len(call.owners)) for call in calls] == [(True, 8)]
    assert [(call.run, len(call.owners)) for call in packer.flush()] == [(False, 5)]


def test_vggish_frames_line_up_across_a_pack(signals):
    """VGGish's frames (400 samples every 160) do not divide a patch's window: each segment is
    padded to whole hops. A small Essentia VGGish graph: packed outputs equal predict's."""
    from conftest import shared_fixture

    model = jaxmir.load(shared_fixture("essentia-models/small_vggish_init.pb"))
    options = Options(last_patch="repeat", pad="zero")
    short = [audio[:int(seconds * 16000)] for audio, seconds in zip(signals, (0.5, 9.7, 1.0, 5.0))]
    found = {item.source.path: outcome
             for item, outcome in compute.analyze_stream(model, _items(short), options)}
    for number, audio in enumerate(short):
        want = model.predict(audio, 16000, last_patch="repeat", pad="zero")
        np.testing.assert_allclose(found[f"track-{number}.wav"]["predictions"], want,
                                   rtol=0, atol=TAGS_ATOL)
