"""jaxmir.resample against python-samplerate (libsamplerate 0.2.2), streaming, gradient, bad input.

Parity bound 1e-6 (max abs): libsamplerate sums ~2 x 45..130 taps per output in double
and rounds the result to float32; we sum in float32 with float32 coefficients. With
|samples| <= 1 and a coefficient magnitude sum of ~2.5 (medium filter), the float32 sum
differs from the double one by a few times 2.5 * 6e-8 ~ 1e-7 plus the final rounding
(3e-8); 1e-6 leaves room for summation-order differences between CPUs, while a wrong tap,
phase or position (what this test guards) moves outputs by >= 1e-5 on music.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxmir.errors import AudioError, InputError
from conftest import child_env, compiled_programs, require, shared_fixture

TOL = 1e-6


def reordered(expected: np.ndarray) -> float:
    """The bound on float32 sums of the same products in another order: a few ulps of the
    largest value (1e-7 flat was under two ulps of values above 0.6: 2 of 30 seeds failed it,
    6 with other kernels' order)."""
    return float(4 * np.spacing(np.float32(np.abs(expected).max())))


@pytest.fixture(scope="module")
def music():
    """3 s of the fixture WAV, mono float32 at 44.1 kHz."""
    sf = require("soundfile")
    data, rate = sf.read(shared_fixture("audio/vignesh.wav"), dtype="float32", always_2d=True)
    assert rate == 44100
    return data.mean(axis=1)[: 3 * rate].astype(np.float32)


def _at(music: np.ndarray, rate: int) -> np.ndarray:
    """The fixture at ``rate`` (via soxr, so each rate gets real, band-limited music)."""
    soxr = require("soxr")
    return music if rate == 44100 else soxr.resample(music, 44100, rate).astype(np.float32)


# Essentia's libsamplerate ends one output before python-samplerate's where the last output's
# position meets the end exactly: at power-of-two ratios, whose 3-s inputs here (even lengths)
# all get there. The last column: outputs fewer than samplerate's (test_decode checks the
# lengths against Essentia's MonoLoader at 8 and 32 kHz).
@pytest.mark.parametrize("rate, target, quality, fewer", [
    (44100, 16000, "sinc_medium", 0), (22050, 16000, "sinc_medium", 0),
    (48000, 16000, "sinc_medium", 0), (8000, 16000, "sinc_medium", 1),
    (96000, 16000, "sinc_medium", 0), (192000, 16000, "sinc_medium", 0),
    (11025, 16000, "sinc_medium", 0), (22050, 44100, "sinc_medium", 1),
    (44100, 22050, "sinc_fastest", 1), (48000, 16000, "sinc_fastest", 0),
    (7999, 16000, "sinc_fastest", 0),
    (17000, 16000, "sinc_medium", 0),   # its anchors reach the phase table's last row
])
def test_parity_with_samplerate(music, rate, target, quality, fewer):
    samplerate = require("samplerate")
    from jaxmir.resample import essentia_ratio, resample

    x = _at(music, rate)
    reference = samplerate.resample(x, essentia_ratio(rate, target), quality)
    ours = resample(x, rate, target, quality)
    assert ours.dtype == np.float32 and ours.shape[0] == reference.shape[0] - fewer
    error = float(np.max(np.abs(ours - reference[:ours.shape[0]])))
    assert error <= TOL, f"{rate} -> {target} {quality}: max abs {error:.3g}"


def test_parity_mp3_and_short_inputs(music):
    """Another real file, and lengths where start-up and termination dominate."""
    samplerate = require("samplerate")
    from jaxmir.resample import essentia_ratio, resample

    sf = require("soundfile")
    data, rate = sf.read(shared_fixture("audio/hiphop.mp3"), dtype="float32", always_2d=True)
    x = data.mean(axis=1)[: 3 * rate].astype(np.float32)
    for piece, native, fewer in ((x, rate, 0), (music[:1], 44100, 0), (music[:7], 44100, 0),
                                 (music[:300], 8000, 1)):  # 8 kHz: see test_parity_with_samplerate
        reference = samplerate.resample(piece, essentia_ratio(native, 16000), "sinc_medium")
        ours = resample(piece, native, 16000)
        assert ours.shape[0] == reference.shape[0] - fewer
        if ours.size:
            assert np.max(np.abs(ours - reference[:ours.shape[0]])) <= TOL


def test_inputs_too_short_for_an_output_give_none():
    """One or two samples at 44.1 or 48 kHz make no 16-kHz output (libsamplerate gives none):
    empty float32 results through every path, the float32 kernels' included (resample_jax, and
    resample where the matrix products do not apply), which raised an IndexError without the
    check for an empty list of outputs."""
    import jax
    import jax.numpy as jnp

    samplerate = require("samplerate")
    from jaxmir.resample import essentia_ratio, resample, resample_jax

    for rate, quality in ((44100, "sinc_medium"), (48000, "sinc_fastest")):
        for n in (1, 2):
            x = np.full(n, 0.5, np.float32)
            reference = samplerate.resample(x, essentia_ratio(rate, 16000), quality)
            assert reference.shape == (0,)              # what this checks: no output at all
            on_jax = resample_jax(jnp.asarray(x), rate, 16000, quality)
            assert isinstance(on_jax, jax.Array)  # as resample_jax's other results
            for ours in (resample(x, rate, 16000, quality), np.asarray(on_jax)):
                assert ours.dtype == np.float32 and ours.shape == reference.shape


def test_essentia_count_walks_positions_only_where_an_output_may_meet_the_end(monkeypatch):
    """``essentia_count`` keeps samplerate's count of no outputs (``n / step`` = 0 is whole: it
    must not take one off), and where ``n / step`` is not whole keeps its count without walking
    libsamplerate's positions (:func:`output_taps`, linear in the length)."""
    samplerate = require("samplerate")
    from jaxmir.resample import essentia_count, plan_of, positions

    for rate in (8000, 44100):  # a power-of-two ratio and another: 0 / step is whole at both
        plan = plan_of(rate, 16000, "sinc_medium")
        made = samplerate.resample(np.zeros(0, np.float32), plan.ratio, "sinc_medium").shape[0]
        assert essentia_count(plan, 0, made) == made == 0

    def walked(*args):
        raise AssertionError("positions walked where no output meets the end")

    monkeypatch.setattr(positions, "output_taps", walked)
    plan = plan_of(44100, 16000, "sinc_medium")
    n_input = 3 * 44100 + 1                           # n / step = 48000.36: not whole
    made = samplerate.resample(np.zeros(n_input, np.float32), plan.ratio, "sinc_medium").shape[0]
    assert essentia_count(plan, n_input, made) == made


# 7999 Hz takes the per-output kernel, 8 kHz -> 44.1 kHz the float32 polyphase kernel (its one
# output in 3 s that reads the last tap; test_common_rates_take_the_polyphase_kernels)
@pytest.mark.parametrize("rate, target, n", [(7999, 22050, 40000), (8000, 44100, 24000)])
def test_the_filter_s_last_tap_is_read_as_libsamplerate_reads_it(rate, target, n):
    """libsamplerate reads the filter up to and including its last index (``<= max``). That tap
    weighs ~1e-7 (sinc_fastest), under the music parity bound, so an impulse placed where one
    output reads it alone is that output's whole value."""
    samplerate = require("samplerate")
    from jaxmir.resample import essentia_ratio, resample
    from jaxmir.resample.positions import output_taps, plan_of

    quality = "sinc_fastest"
    plan = plan_of(rate, target, quality)
    centre, start = (np.asarray(a, np.int64) for a in output_taps(plan, n))
    at_last = np.flatnonzero((plan.max_index - start) % plan.increment == 0)
    k = int(at_last[at_last.size // 2])
    impulse = np.zeros(n, np.float32)
    impulse[centre[k] - (plan.max_index - start[k]) // plan.increment - plan.taps] = 1.0
    reference = samplerate.resample(impulse, essentia_ratio(rate, target), quality)[k]
    assert abs(reference) > 1e-8  # the test reads a tap that weighs something
    assert abs(resample(impulse, rate, target, quality)[k] - reference) <= 1e-3 * abs(reference)


def test_a_position_landing_on_a_sample_is_that_sample():
    """libsamplerate's ``fmod_one`` keeps a position of exactly 0 (it adds 1 below 0 only): at
    16 -> 48 kHz (a step of 1/3) every third output lands on a sample; read as 1 there, the
    state a stream carries to its next push was a sample behind."""
    from jaxmir.resample import positions

    x, advances, after = positions._positions_python(1 / 3, 0.0, 6)
    assert advances.tolist() == [0, 0, 1, 0, 0, 1] and x[3] == 0.0 and after == 0.0


def test_a_filter_whose_impulse_responses_disagree_is_refused(monkeypatch):
    """The filter is measured from ``samplerate``'s impulse responses; another build's, whose
    responses at one position disagree, is refused rather than averaged into a table."""
    samplerate = require("samplerate")
    from jaxmir.resample import table

    measured = samplerate.resample

    def off_at_ratio_one(x, ratio, quality):  # the centre taps, which every shift also reads
        out = np.array(measured(x, ratio, quality))
        return out * np.float32(1.01) if ratio == 1.0 else out

    monkeypatch.setattr(samplerate, "resample", off_at_ratio_one)
    with pytest.raises(AudioError, match="sinc_fastest filter is not libsamplerate 0.2.2's: its "
                                         "impulse response disagrees with itself"):
        table.coefficients.__wrapped__("sinc_fastest")


def test_a_filter_left_partly_unmeasured_or_unknown_is_refused(monkeypatch):
    """A build whose impulse responses stop short leaves table entries unseen: refused, not
    kept as NaN; an unknown quality is an AudioError naming those accepted (it was a KeyError
    through the public ``coefficients``)."""
    samplerate = require("samplerate")
    from jaxmir.resample import table

    with pytest.raises(AudioError, match="unknown resampling quality 'sinc_ultra'; accepted: "
                                         "sinc_best, sinc_medium, sinc_fastest"):
        table.coefficients("sinc_ultra")  # an error is not cached
    measured = samplerate.resample

    def cut_short(x, ratio, quality):  # the centre tap (ratio 1) measured, the rest in part
        out = np.array(measured(x, ratio, quality))
        return out if ratio == 1.0 else out[:len(out) // 8]

    monkeypatch.setattr(samplerate, "resample", cut_short)
    with pytest.raises(AudioError, match=r"could not measure samplerate's sinc_fastest filter "
                                         r"\(table entries \[\d+( \d+)*\] unseen\)"):
        table.coefficients.__wrapped__("sinc_fastest")


@pytest.mark.parametrize("rate", [22050, 11025])
def test_positions_in_python_equal_the_compiled_scan(rate):
    """Short runs of libsamplerate's recurrence (a stream's push, the filter's measurement) go
    through Python's doubles, long ones through the float64 scan: the same positions, where the
    additions round (22.05 and 11.025 kHz to 16 kHz) and from a fraction mid-way."""
    from jaxmir.resample import positions

    step = positions.plan_of(rate, 16000, "sinc_medium").step
    for x0 in (0.0, 0.6180339887498949):
        python = positions._positions_python(step, x0, 40_000)
        scanned = positions._positions_sequential(step, x0, positions._PYTHON_STEPS + 1)
        np.testing.assert_array_equal(python[0][:positions._PYTHON_STEPS], scanned[0][:-1])
        np.testing.assert_array_equal(python[1][:positions._PYTHON_STEPS], scanned[1][:-1])
        longer = positions._positions_sequential(step, x0, 40_000)
        np.testing.assert_array_equal(python[0], longer[0])
        np.testing.assert_array_equal(python[1], longer[1])
        assert python[2] == longer[2]


@pytest.mark.parametrize("start, count", [(0.0, 70_000), (0.1, 2000)])
def test_positions_sequential_equals_closed_form(start, count):
    """The float64 scan and the integer closed form agree where the closed form is exact. It
    needs the start on the step's grid (multiples of its ulp): from 0.1 libsamplerate's first
    addition rounds, and every position after it carries that rounding, which the integer
    closed form would miss."""
    from jaxmir.resample import positions

    step = positions.plan_of(44100, 16000, "sinc_medium").step
    assert positions.step_closed_form(step)
    closed = positions.positions(step, start, count)
    scanned = positions._positions_sequential(step, start, count)
    np.testing.assert_array_equal(closed[0], scanned[0])
    np.testing.assert_array_equal(closed[1], scanned[1])
    assert closed[2] == scanned[2]


@pytest.mark.parametrize("rates, first_rounding", [((22050, 16000), 2), ((212731, 193381), 1628),
                                                   ((54792, 109569), 7306)])
def test_positions_where_the_additions_first_round(rates, first_rounding):
    """:func:`_positions` probes the first steps, then checks the rest: libsamplerate's positions
    whether its additions round from the start (22.05 kHz) or only after the probe (ratios near
    1 and 1/2, whose first rounding comes at the step given)."""
    from jaxmir.resample import positions

    step = positions.plan_of(*rates, "sinc_medium").step
    whole, frac = positions.split_step(step)
    sums = positions._fractions(0, frac, first_rounding + 1) + np.uint64(frac)
    assert positions._exact_sums(sums[:first_rounding], whole)
    assert not positions._exact_sums(sums[first_rounding:], whole)
    count = first_rounding + 5_000
    ours, python = (positions._positions(step, 0.0, count),
                    positions._positions_python(step, 0.0, count))
    np.testing.assert_array_equal(ours[0], python[0])
    np.testing.assert_array_equal(ours[1], python[1])
    assert ours[2] == python[2]


@pytest.mark.parametrize("min_outputs", [0, 2048, 8192])
@pytest.mark.parametrize("rate", [44100, 22050])
def test_streaming_equals_one_shot(music, rate, min_outputs):
    from jaxmir import resample as rs
    from jaxmir.resample import SincResampler, essentia_ratio, resample

    x = _at(music, rate)[: 2 * rate]
    expected = resample(x, rate, 16000)
    rng = np.random.default_rng(rate)
    sizes = np.concatenate([[1, 1, 2, 3], rng.integers(1, 9000, 40)])
    stream, pieces, at = SincResampler(rate, 16000, min_outputs=min_outputs), [], 0
    for size in sizes:
        pieces.append(stream.push(x[at:at + size]))
        at += size
        if at >= x.shape[0]:
            break
    pieces.append(stream.push(x[at:]))
    pieces.append(stream.flush())
    got = np.concatenate(pieces)
    if rs.accelerated(rate, 16000):
        # the matrix-product kernel's calls start on the one-shot call's group boundaries, so
        # its anchors and sums are the same: bit for bit, whatever the chunks
        np.testing.assert_array_equal(got, expected)
    else:
        # the float32 polyphase kernel's rows start where each call starts: the same products
        # summed in another order (measured 4.5e-8, a float32 ulp of the largest samples)
        assert np.max(np.abs(got - expected)) <= reordered(expected)
    samplerate = require("samplerate")
    reference = samplerate.resample(x, essentia_ratio(rate, 16000), "sinc_medium")
    assert np.max(np.abs(got - reference)) <= TOL
    with pytest.raises(AudioError):
        stream.push(x[:10])


@pytest.mark.parametrize("rate", [44100, 22050, 11025])
def test_small_pushes_wait_for_a_step_of_outputs(music, rate, monkeypatch):
    """Chunks of 1024 samples: a stream runs its kernels about once per ``MIN_OUTPUTS`` outputs
    rather than once a push (a run costs ~1 ms, however few outputs it gives), holds back at
    most that many more than it must, and still gives the one-shot call's samples."""
    from jaxmir import resample as rs
    from jaxmir.resample import convert

    x = _at(music, rate)
    expected = rs.resample(x, rate, 16000)
    runs, emit = [], convert.SincResampler._emit
    monkeypatch.setattr(convert.SincResampler, "_emit",
                        lambda self, *args: runs.append(self) or emit(self, *args))

    def lags(min_outputs: int) -> tuple[np.ndarray, np.ndarray]:
        """Every push's input so far in outputs minus the outputs given; and all outputs."""
        stream = convert.SincResampler(rate, 16000, min_outputs=min_outputs)
        pieces, lag, given = [], [], 0
        for i in range(0, x.shape[0], 1024):
            pieces.append(stream.push(x[i:i + 1024]))
            given += pieces[-1].shape[0]
            lag.append((i + x[i:i + 1024].shape[0]) * 16000 / rate - given)
        return np.array(lag), np.concatenate(pieces + [stream.flush()])

    prompt, immediate = lags(0)
    runs.clear()
    held, stepped = lags(convert.MIN_OUTPUTS)
    for got in (immediate, stepped):
        if rs.accelerated(rate, 16000):
            np.testing.assert_array_equal(got, expected)
        else:  # the float32 polyphase kernel's rows start where its runs do (see above)
            assert got.shape == expected.shape
            assert np.max(np.abs(got - expected)) <= reordered(expected)
    pushes = -(-x.shape[0] // 1024)                  # 33 (11.025 kHz) to 130 (44.1 kHz)
    assert len(runs) <= expected.shape[0] // convert.MIN_OUTPUTS + 2 < pushes
    assert np.max(held - prompt) <= convert.MIN_OUTPUTS + 1024 * 16000 / rate


def test_a_push_runs_once_its_input_makes_min_outputs():
    """A push waits while the input since the last outputs makes fewer than ``min_outputs``
    outputs, and runs once it makes that many: at 44.1 -> 16 kHz, the default 2048 outputs
    take 5645 samples (5644 make 2047.7), whose final outputs are the one-shot call's."""
    from jaxmir.resample import MIN_OUTPUTS, SincResampler, resample

    need = -(-MIN_OUTPUTS * 44100 // 16000)           # ceil, in exact integers
    x = np.random.default_rng(4).uniform(-1, 1, need).astype(np.float32)
    stream = SincResampler(44100, 16000)
    assert stream.push(x[:-1]).size == 0
    got = stream.push(x[-1:])
    assert got.size > 0
    np.testing.assert_array_equal(got, resample(x, 44100, 16000)[:got.size])


def test_the_recurrence_moves_to_the_compiled_scan(monkeypatch):
    """libsamplerate's recurrence runs in Python for a process's first ``_PYTHON_STEPS`` steps
    (no compilation for a short clip), then in the compiled scan, except for runs too short to
    pay for a call of it: the same positions either way."""
    from jaxmir.resample import positions

    step = positions.plan_of(22050, 16000, "sinc_medium").step
    expected = positions._positions_python(step, 0.25, 5000)
    python, used = positions._positions_python, []
    monkeypatch.setattr(positions, "_positions_python",
                        lambda *args: used.append(args[2]) or python(*args))
    monkeypatch.setattr(positions, "_python_steps_left", 6000)
    runs = [positions._positions_sequential(step, 0.25, count) for count in (5000, 5000, 1000)]
    assert used == [5000, 1000]
    for got, count in zip(runs, (5000, 5000, 1000)):
        np.testing.assert_array_equal(got[0], expected[0][:count])
        np.testing.assert_array_equal(got[1], expected[1][:count])


@pytest.mark.parametrize("rate", [44100, 48000, 32000])
def test_stream_on_the_closed_form_tracks_no_positions(music, rate, monkeypatch):
    """Where libsamplerate's positions have a closed form, a stream's calls compute them in the
    kernel from their first group (as the one-shot call does): nothing per output on the host."""
    from jaxmir.resample import convert, positions, resample

    assert positions.step_closed_form(positions.plan_of(rate, 16000, "sinc_medium").step)
    x = _at(music, rate)
    expected = resample(x, rate, 16000)

    def tracked(*args):
        raise AssertionError("positions tracked on the host")

    monkeypatch.setattr(convert, "exact_positions", tracked)
    stream = convert.SincResampler(rate, 16000)
    step = rate // 3 + 17
    got = np.concatenate([stream.push(x[i:i + step]) for i in range(0, x.shape[0], step)]
                         + [stream.flush()])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("rate", [44100, 22050])
def test_one_shot_calls_side_by_side_equal_a_stream(music, rate):
    """A one-shot conversion longer than one call of the matrix-product kernel runs its calls
    on all cores (threads); a stream runs them one after another: the same outputs bit for bit."""
    from jaxmir import resample as rs
    from jaxmir.resample import lanes, positions, products

    x = np.tile(_at(music, rate), 4)                 # 12 s: several calls of ~4 s of output
    plan = positions.plan_of(rate, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    assert x.shape[0] * plan.ratio > 2 * shape.groups * shape.rows * plan.period
    assert lanes.lanes() is not None or len(os.sched_getaffinity(0)) == 1
    one_shot = rs.resample(x, rate, 16000)
    stream = rs.SincResampler(rate, 16000)
    streamed = np.concatenate([stream.push(x[i:i + rate]) for i in range(0, x.shape[0], rate)]
                              + [stream.flush()])
    np.testing.assert_array_equal(one_shot, streamed)
    samplerate = require("samplerate")
    reference = samplerate.resample(x, rs.essentia_ratio(rate, 16000), "sinc_medium")
    assert np.max(np.abs(one_shot - reference)) <= TOL


def _record_kernel_calls(monkeypatch) -> list:
    """Each matrix-product kernel call's thread name, thread cores and phase-table device. The
    first calls of two lane threads wait for each other: a lane done with its first run of
    calls before another lane woke (on a busy or single core) would take the next run too."""
    import threading

    from jaxmir.resample import products

    seen, kernel = [], products._matmul_kernel
    met, waiting, lanes_met = threading.Barrier(2, timeout=30), threading.Lock(), set()

    def recorded(*args, **kwargs):
        name = threading.current_thread().name
        seen.append((name, os.sched_getaffinity(0), set(args[4].devices())))
        with waiting:
            meets = name.startswith("jaxmir-resample") and name not in lanes_met \
                and len(lanes_met) < 2
            if meets:
                lanes_met.add(name)
        if meets:
            met.wait()
        return kernel(*args, **kwargs)

    monkeypatch.setattr(products, "_matmul_kernel", recorded)
    return seen


def _twelve_seconds_both_ways(music):
    """12 s at 44.1 kHz through the matrix-product kernel: side by side (``parallel``), then
    in the calling thread on the default device."""
    from jaxmir.resample import positions, products

    x = np.tile(_at(music, 44100), 4)
    plan = positions.plan_of(44100, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    count = products.matmul_count(plan, x.shape[0])
    return (products.matmul_outputs(plan, shape, x, count, parallel=True),
            products.matmul_outputs(plan, shape, x, count))


def _lanes_see_cores(monkeypatch, cores) -> None:
    """Make the lanes module (and it alone: other threads and modules keep the real ``os``)
    take ``cores`` for the calling thread's; a core listed twice makes two lanes on it."""
    import types

    from jaxmir.resample import lanes

    monkeypatch.setattr(lanes, "os", types.SimpleNamespace(
        sched_getaffinity=lambda pid: list(cores), sched_setaffinity=os.sched_setaffinity))


def _lane_threads(seen) -> dict:
    """The recorded calls made in lane threads: name -> (cores held, devices called)."""
    return {name: (frozenset(cores), frozenset(devices)) for name, cores, devices in seen
            if name.startswith("jaxmir-resample")}


def test_one_shot_calls_run_in_lanes_each_on_its_core_and_client(music, monkeypatch):
    """On two or more cores a one-shot conversion's calls run in lanes: threads each held to a
    core of its own and calling a CPU device of a client of its own (the default client's one
    intra-op pool would split every operation across all cores); the calling thread's cores are
    untouched, and the outputs equal one thread's on the default device bit for bit (a call
    without ``parallel`` runs in the calling thread). On one core (which makes no lanes) two
    lanes share it."""
    import threading

    import jax

    from jaxmir.resample import lanes

    cores = os.sched_getaffinity(0)
    if len(cores) == 1:
        _lanes_see_cores(monkeypatch, 2 * sorted(cores))
        lanes.forget_lanes()
    made = None
    try:
        made = lanes.lanes()
        assert made.count == min(len(cores), lanes.MAX_LANES) or len(cores) == 1
        seen = _record_kernel_calls(monkeypatch)
        side_by_side, one_thread = _twelve_seconds_both_ways(music)
    finally:
        if len(cores) == 1:
            if made is not None:
                made.threads.shutdown()
            lanes.forget_lanes()
    np.testing.assert_array_equal(side_by_side, one_thread)
    threads = _lane_threads(seen)
    held = [next(iter(cores_held)) for cores_held, _ in threads.values()]
    assert len(threads) >= 2 and all(len(c) == 1 for c, _ in threads.values())
    assert len(set(held)) == len(held) or len(cores) == 1
    assert set(held) <= cores
    clients = [next(iter(devices)).client for _, devices in threads.values()]
    assert all(len(devices) == 1 for _, devices in threads.values())
    assert len(set(clients)) == len(clients) and jax.devices()[0].client not in clients
    assert all(devices == {jax.devices()[0]} for name, _, devices in seen
               if not name.startswith("jaxmir-resample"))
    names, calling = [name for name, _, _ in seen], threading.current_thread().name
    assert calling not in names[:len(names) // 2]
    assert names[len(names) // 2:] == [calling] * (len(names) // 2)   # the call without parallel
    assert os.sched_getaffinity(0) == cores


@pytest.mark.parametrize("refusal", ["no client", "no program"])
def test_lanes_without_clients_of_their_own_call_the_default_device(music, monkeypatch,
                                                                    refusal):
    """Where jaxlib cannot make a client per lane, or JAX will not run a program on its device,
    the lanes (still each on its core) call the default device: the same outputs. Two lanes on
    one core, so that any machine runs them."""
    import types

    import jax

    from jaxmir.resample import lanes

    def refused(**options):
        if refusal == "no client":
            raise RuntimeError("no such client here")
        return types.SimpleNamespace(local_devices=lambda: ["a device JAX does not take"])

    # lanes' jaxlib alone: JAX's own backend, made at its first use, takes the real one
    monkeypatch.setattr(lanes, "xla_client", types.SimpleNamespace(make_cpu_client=refused))
    _lanes_see_cores(monkeypatch, 2 * sorted(os.sched_getaffinity(0))[:1])
    lanes.forget_lanes()
    made = None
    try:
        made = lanes.lanes()
        seen = _record_kernel_calls(monkeypatch)
        side_by_side, one_thread = _twelve_seconds_both_ways(music)
    finally:
        if made is not None:
            made.threads.shutdown()
        lanes.forget_lanes()  # the next conversion makes lanes with clients again
    np.testing.assert_array_equal(side_by_side, one_thread)
    threads = _lane_threads(seen)
    assert len(threads) == 2 and all(len(c) == 1 for c, _ in threads.values())
    assert all(devices == {jax.devices()[0]} for _, _, devices in seen)


def test_threads_asking_at_once_share_one_set_of_lanes(monkeypatch):
    """A collection's decoding threads convert their first files at once: they get the same
    lanes, not a set of threads and clients each."""
    import threading
    import time

    from jaxmir.resample import lanes

    made = []

    class Slow(lanes.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            time.sleep(0.05)                 # widens the window two makers would share
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lanes, "ThreadPoolExecutor", Slow)
    _lanes_see_cores(monkeypatch, [0, 1])   # the threads never start: no core is held
    lanes.forget_lanes()
    try:
        start, got = threading.Barrier(4), []
        askers = [threading.Thread(target=lambda: (start.wait(), got.append(lanes.lanes())))
                  for _ in range(4)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()
        assert len(got) == 4 and all(one is got[0] for one in got)
        assert len(made) == 1 and got[0].threads is made[0]
    finally:
        lanes.forget_lanes()


def test_lanes_are_one_per_core_up_to_max_lanes_and_none_on_one_core(monkeypatch):
    """A lane per core the calling thread may use, at most MAX_LANES (a client and a compiled
    kernel each); one core makes none. The threads start at the first call, so none is held to
    these cores (most of which this machine need not have)."""
    from jaxmir.resample import lanes

    try:
        for cores, count in (({3}, None), ({1, 6}, 2), (set(range(40)), lanes.MAX_LANES)):
            _lanes_see_cores(monkeypatch, cores)
            lanes.forget_lanes()
            made = lanes.lanes()
            assert (None if made is None else made.count) == count, cores
            if made is not None:
                made.threads.shutdown()
    finally:
        monkeypatch.undo()
        lanes.forget_lanes()


def test_lanes_building_a_phase_table_at_once_share_its_memory():
    """A conversion's first calls ask for the phase table in every lane at once, each for its
    device: one host table (~20 MB a plan) is built, and every device's table is that memory
    (each lane built one of its own, and kept it, before)."""
    import threading

    from jaxmir.resample import lanes, positions, products

    plan = positions.plan_of(44100, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    devices = [lanes.single_core_device() for _ in range(3)]    # CPU devices, whatever backend
    assert None not in devices
    start, tables = threading.Barrier(len(devices)), {}

    def ask(device):
        start.wait()
        tables[device] = products._phase_table(plan, shape, device)

    products._phase_table.cache_clear()
    products._host_phase_table.cache_clear()
    askers = [threading.Thread(target=ask, args=(device,)) for device in devices]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    memory = {tuple(part.unsafe_buffer_pointer() for part in table) for table in tables.values()}
    assert len(tables) == len(devices) and len(memory) == 1, memory


def test_a_forked_child_makes_lanes_of_its_own():
    """A forked child has none of its parent's lane threads: it forgets their lanes. Nor has it
    a thread that held the lanes' lock, or the phase tables', at the fork: its locks are free."""
    import warnings

    from jaxmir.resample import lanes, products

    parents = lanes.lanes()
    with lanes._making, products._building, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # JAX's: a fork of a threaded process
        child = os.fork()
        if child == 0:                                    # still holding the parent's locks
            status = 1
            try:
                free = [lock.acquire(timeout=5) for lock in (lanes._making, products._building)]
                status = 0 if lanes._made == [] and free == [True, True] else 1
            finally:
                os._exit(status)                          # never back into pytest
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lanes.lanes() is parents


def test_gradient_is_the_transpose():
    """d(w . y)/dx equals the response to unit impulses projected on w (the map is linear)."""
    import jax
    import jax.numpy as jnp
    from jaxmir.resample import essentia_ratio, resample, resample_jax

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 600).astype(np.float32)
    weights = rng.standard_normal(resample(x, 44100, 16000).shape[0]).astype(np.float32)
    grad = jax.grad(lambda s: jnp.vdot(resample_jax(s, 44100, 16000), weights))(jnp.asarray(x))
    for j in (0, 1, 299, 599):
        impulse = np.zeros_like(x)
        impulse[j] = 1.0
        expected = float(np.dot(resample(impulse, 44100, 16000), weights))
        assert abs(float(grad[j]) - expected) <= 1e-5 * max(1.0, abs(expected))
    # resample_jax runs the float32 kernels (traceable), resample the float64 matrix products:
    # each within the parity bound of libsamplerate on this full-scale noise
    samplerate = require("samplerate")
    reference = samplerate.resample(x, essentia_ratio(44100, 16000), "sinc_medium")
    assert np.max(np.abs(np.asarray(resample_jax(jnp.asarray(x), 44100, 16000)) - reference)) <= TOL
    assert np.max(np.abs(resample(x, 44100, 16000) - reference)) <= TOL


TRACED_FIRST = """
import sys
import jax, jax.numpy as jnp, numpy as np, samplerate
from jaxmir.resample import SincResampler, essentia_ratio, positions, resample, resample_jax

positions._python_steps_left = 0  # the recurrence's compiled scan, as in a long-running process
x = np.random.default_rng(0).uniform(-1, 1, 30000).astype(np.float32)
worst = 0.0
for rate, target in ((22050, 16000), (11025, 16000), (16000, 44100), (48000, 16000)):
    reference = samplerate.resample(x, essentia_ratio(rate, target), "sinc_medium")
    traced = jax.jit(lambda v: resample_jax(v, rate, target))(x)  # the process's first call
    stream = SincResampler(rate, target)
    chunks = [stream.push(x[:12345]), stream.push(x[12345:]), stream.flush()]
    for got in (traced, resample_jax(jnp.asarray(x), rate, target), resample(x, rate, target),
                np.concatenate(chunks)):
        assert np.shape(got) == reference.shape, (rate, target, np.shape(got))
        worst = max(worst, float(np.max(np.abs(np.asarray(got) - reference))))
print(worst)
"""


@pytest.mark.parametrize("x64", ["0", "1"])
def test_resample_jax_traced_first_and_under_x64(x64):
    """A jit of resample_jax first cached a tracer as the coefficient table (every later call
    failed), failed itself where the positions need the recurrence's compiled scan, and every
    kernel but the matrix products raised a TypeError with jax_enable_x64."""
    import subprocess
    import sys

    require("samplerate")
    env = child_env(JAX_ENABLE_X64=x64, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", TRACED_FIRST], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) <= TOL


@pytest.mark.parametrize("rate", [22050, 44100])
def test_the_fastest_filter_keeps_the_bound_on_full_scale_noise(rate):
    """Through the matrix-product kernel it missed it: 4.4e-6 at 22.05 kHz, 1.3e-6 at 44.1."""
    samplerate = require("samplerate")
    from jaxmir.resample import essentia_ratio, resample

    x = np.random.default_rng(0).uniform(-1, 1, 200_000).astype(np.float32)
    reference = samplerate.resample(x, essentia_ratio(rate, 16000), "sinc_fastest")
    assert np.max(np.abs(resample(x, rate, 16000, "sinc_fastest") - reference)) <= TOL


def test_the_medium_filter_keeps_the_bound_on_full_scale_noise_above_ratio_one_half():
    """Plans above ratio 1/2 take groups of fewer rows (the matrix-product kernel's error grows
    as sqrt(ratio) and as the drift squared): at 20.3 kHz with the drift bound of 44.1 kHz's
    groups, full-scale noise missed the bound (1.2-1.4e-6 over 3 seeds; 6-7e-7 with it)."""
    samplerate = require("samplerate")
    from jaxmir.resample import accelerated, essentia_ratio, resample

    assert accelerated(20300, 16000)                  # what this checks is that kernel's error
    x = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
    reference = samplerate.resample(x, essentia_ratio(20300, 16000), "sinc_medium")
    assert np.max(np.abs(resample(x, 20300, 16000) - reference)) <= TOL


def test_the_medium_filter_keeps_the_bound_where_the_anchor_grid_sets_the_rows():
    """Rows per group count the anchors' rounding (half a grid step) as well as the drift: at
    18.528 kHz, drift alone allows twice the rows, and full-scale noise missed the bound
    (1.13e-6; 5.1e-7 with the rounding counted)."""
    samplerate = require("samplerate")
    from jaxmir.resample import accelerated, essentia_ratio, resample

    assert accelerated(18528, 16000)                  # what this checks is that kernel's error
    x = np.random.default_rng(1).uniform(-1, 1, 200_000).astype(np.float32)
    reference = samplerate.resample(x, essentia_ratio(18528, 16000), "sinc_medium")
    assert np.max(np.abs(resample(x, 18528, 16000) - reference)) <= TOL


def test_empty_pushes_keep_nothing():
    """A live source polled with nothing new pushed empty chunks, each kept until the next
    run of the kernels (a million of them: 150 MB, and a stall at the next real push)."""
    from jaxmir.resample import SincResampler

    stream = SincResampler(44100, 16000)
    stream.push(np.zeros(1000, np.float32))
    for _ in range(1000):
        assert stream.push(np.zeros(0, np.float32)).size == 0
    assert len(stream._pending) == 1


def test_close_is_flush_by_the_streams_name():
    """Stream and Resampling end with close(); SincResampler had flush() only (AttributeError)."""
    from jaxmir.resample import SincResampler, resample

    x = np.random.default_rng(2).uniform(-1, 1, 5000).astype(np.float32)
    stream = SincResampler(44100, 16000)
    got = np.concatenate([stream.push(x), stream.close()])
    np.testing.assert_array_equal(got, resample(x, 44100, 16000))
    assert stream.close().size == 0 and stream.flush().size == 0


_ESSENTIA_RESAMPLE = """
import sys
import numpy as np
import essentia.standard as es
x = np.load(sys.argv[1])
for rate in map(int, sys.argv[3:]):
    out = es.Resample(inputSampleRate=rate, outputSampleRate=rate, quality=1)(x)
    np.save(f"{sys.argv[2]}-{rate}.npy", out)
"""


def test_equal_rates_give_the_input_as_essentia_does(tmp_path):
    """Essentia's Resample copies at equal rates; resample() filtered and lost the last sample."""
    import subprocess

    from conftest import essentia_python
    from jaxmir.resample import SincResampler, resample, resample_jax

    x = np.random.default_rng(5).uniform(-1, 1, 4410).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rates = (8000, 16000, 44100)
    subprocess.run([essentia_python(), "-c", _ESSENTIA_RESAMPLE, str(tmp_path / "x.npy"),
                    str(tmp_path / "out"), *map(str, rates)], check=True, env=child_env())
    for rate in rates:
        essentia = np.load(tmp_path / f"out-{rate}.npy")
        same = resample(x, rate, rate)
        np.testing.assert_array_equal(same, essentia)
        same[:] = 0.0  # a copy: the caller's array is its own
        np.testing.assert_array_equal(x, np.load(tmp_path / "x.npy"))
        np.testing.assert_array_equal(np.asarray(resample_jax(x, rate, rate)), essentia)
        stream = SincResampler(rate, rate)
        pieces = [stream.push(x[:1000]), stream.push(x[1000:1001]), stream.push(x[1001:]),
                  stream.flush()]
        np.testing.assert_array_equal(np.concatenate(pieces), essentia)
    assert resample(np.zeros(0, np.float32), 16000, 16000).shape == (0,)


@pytest.mark.parametrize("rate", [44100, 11025, 16000])
def test_a_pushed_buffer_may_be_reused(rate):
    """A push waiting for more samples kept the caller's array: a buffer reused for the next
    chunk (a sound card's callback, readinto) changed the samples resampled (108 off)."""
    from jaxmir.resample import SincResampler, resample

    x = (0.3 * np.random.default_rng(8).standard_normal(20000)).astype(np.float32)
    stream, buffer, pieces = SincResampler(rate, 16000), np.empty(500, np.float32), []
    for start in range(0, x.shape[0], 500):
        buffer[:] = x[start:start + 500]
        pieces.append(stream.push(buffer))
        buffer[:] = 99.0
    got = np.concatenate([*pieces, stream.close()])
    expected = resample(x, rate, 16000)
    assert got.shape == expected.shape
    # bit for bit at 44.1 kHz; float32 order else
    assert np.max(np.abs(got - expected)) <= reordered(expected)


def test_bad_input():
    from jaxmir.resample import MAX_MIN_OUTPUTS, MAX_TAPS, SincResampler, plan_of, resample

    x = np.zeros(100, np.float32)
    assert resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)
    for rate in (0, -1, 384_001, 44100.5, "44100", True):
        with pytest.raises(AudioError):
            resample(x, rate, 16000)
    with pytest.raises(AudioError, match="^1 Hz -> 384000 Hz is a ratio of 384000;"):
        resample(x, 1, 384_000)                # ratio 384000 > 256
    with pytest.raises(AudioError, match="taps"):
        resample(x, 384_000, 1500, "sinc_best")   # 1/256 with the best filter: ~36600 taps
    with pytest.raises(AudioError, match="needs 22864 filter taps per side; at most 16384"):
        resample(x, 384_000, 2400, "sinc_best")   # just past the bound: it ran, for 6 s
    assert plan_of(114_650, 1000, "sinc_best").taps == MAX_TAPS   # the bound itself is allowed
    with pytest.raises(AudioError, match="quality"):
        resample(x, 44100, 16000, "sinc_ultra")
    with pytest.raises(AudioError, match="NaN"):
        resample(np.array([0.0, np.nan], np.float32), 44100, 16000)
    with pytest.raises(AudioError, match="mono"):
        resample(np.zeros((10, 2), np.float32), 44100, 16000)
    with pytest.raises(AudioError, match="NaN"):
        SincResampler(44100, 16000).push(np.array([np.inf], np.float32))
    for steps in (-1, 2.5, "2048", True, MAX_MIN_OUTPUTS + 1):
        with pytest.raises(InputError, match="min_outputs"):
            SincResampler(44100, 16000, min_outputs=steps)
    SincResampler(44100, 16000, min_outputs=MAX_MIN_OUTPUTS)   # the bound itself is taken
    assert resample(x, 1, 256, "sinc_fastest").shape[0] > 0   # extreme but valid rates work


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_samples_are_counted_and_loud_finite_ones_pass(dtype):
    """Each NaN or infinity is refused and counted wherever it sits, in every float dtype; finite
    samples whose squares overflow (the sum of squares screens the samples first) still pass."""
    import warnings

    from jaxmir.resample import resample

    for bad in ([np.nan], [np.inf], [-np.inf], [np.inf, -np.inf], [np.nan, np.inf, np.nan]):
        for at in (0, 4_000, 9_999):
            x = np.zeros(10_000, dtype)
            x[at:at + len(bad)] = bad[:10_000 - at]
            with pytest.raises(AudioError, match=f"^audio contains {min(len(bad), 10_000 - at)} "
                                                 "NaN or infinite"):
                resample(x, 44100, 16000)
    if dtype == np.float32:                          # float64's overflowing squares are refused
        loud = np.zeros(10_000, dtype)               # as beyond float32's range
        loud[5_000] = 1e20                           # its square: inf in float32
        with warnings.catch_warnings():
            warnings.simplefilter("error")           # NumPy's overflow warning is not the user's
            assert np.isfinite(resample(loud, 32000, 16000)).all()


def test_resample_jax_checks_the_kind_of_its_input():
    """A list raised a raw AttributeError, bools were resampled as 0/1, complex samples lost
    their imaginary part; float64 beyond float32's range was called NaN (with NumPy's warning)."""
    import warnings

    from jaxmir.resample import resample, resample_jax

    samples = [0.0, 0.5, -0.5] * 300
    np.testing.assert_array_equal(np.asarray(resample_jax(samples, 44100, 16000)),
                                  np.asarray(resample_jax(np.asarray(samples, np.float32),
                                                          44100, 16000)))
    for dtype in (bool, np.complex64):
        for function in (resample, resample_jax):
            with pytest.raises(AudioError, match=f"dtype {np.dtype(dtype)}; expected float32"):
                function(np.zeros(100, dtype), 44100, 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for beyond in (np.full(100, 1e40), np.where(np.arange(100) == 60, -1e39, 0.25)):
            with pytest.raises(AudioError, match="beyond float32's range"):  # all, or one
                resample(beyond, 44100, 16000)


def test_common_rates_take_the_polyphase_kernels():
    """44.1/48/32/96 kHz -> 16 kHz take the matrix-product kernel, and so does 22.05 kHz, whose
    position recurrence rounds (its positions come from the host); upsampling (8 kHz) takes the
    float32 polyphase kernel, a rate without a short exact period (7999 Hz) the per-output
    kernel. The parity tests above check their numbers."""
    from jaxmir import resample as rs
    from jaxmir.resample import kernels, positions, products

    for rate, matmul, polyphase in ((44100, True, True), (48000, True, True), (32000, True, True),
                                    (96000, True, True), (22050, True, True), (8000, False, True),
                                    (7999, False, False)):
        plan = positions.plan_of(rate, 16000, "sinc_medium")
        assert (products.matmul_shape(plan) is not None) == matmul, rate
        centre, start = positions.output_taps(plan, 5 * rate)
        assert (kernels._polyphase_layout(plan, centre, start) is not None) == polyphase, rate
    # sinc_best's phase table would be too large; so would 44.056 and 47.999 kHz's, periods of
    # 2,000 and 16,000 outputs (44.056 kHz's first call took 13 s with one, 1 s without)
    assert products.matmul_shape(positions.plan_of(44100, 16000, "sinc_best")) is None
    accelerated = [rate for rate in (8000, 11025, 22050, 24000, 32000, 44100, 48000, 88200, 96000,
                                     176400, 192000, 44056, 47999) if rs.accelerated(rate, 16000)]
    assert accelerated == [22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000]


def test_matrix_product_kernel_bounds_and_fallback(music, monkeypatch):
    """Outputs whose drift from their anchor exceeds the bound are not used: the call falls
    back to the exact float32 kernels, with the same numbers (within both kernels' error)."""
    import jax.numpy as jnp

    from jaxmir import resample as rs
    from jaxmir.resample import positions, products

    samplerate = require("samplerate")
    reference = samplerate.resample(music, rs.essentia_ratio(44100, 16000), "sinc_medium")
    plan = positions.plan_of(44100, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    count = products.matmul_count(plan, music.shape[0])
    assert count == reference.shape[0]
    fast = products.matmul_outputs(plan, shape, music, count)
    assert fast is not None and np.max(np.abs(fast - reference)) <= 2e-7
    assert jnp.zeros(1).dtype == jnp.float32          # float64 mode stayed inside the kernel
    monkeypatch.setattr(products, "_DELTA_LIMIT", 8)          # read by the kernel at trace time
    products._matmul_kernel.clear_cache()
    try:
        assert products.matmul_outputs(plan, shape, music, count) is None
        slow = rs.resample(music, 44100, 16000)
        stream = rs.SincResampler(44100, 16000)
        streamed = np.concatenate([stream.push(music[i:i + 20000])
                                   for i in range(0, music.shape[0], 20000)] + [stream.flush()])
        assert stream._matmul is None                   # the stream fell back too
    finally:
        monkeypatch.undo()
        products._matmul_kernel.clear_cache()
    assert np.max(np.abs(slow - reference)) <= TOL
    assert streamed.shape == reference.shape and np.max(np.abs(streamed - reference)) <= TOL


def test_the_closed_form_positions_are_libsamplerate_s_recurrence(music):
    """The kernel's closed-form positions (filter starts rounded as lrint rounds them) are the
    ones libsamplerate's recurrence gives (``positions.exact_positions``, jaxmir's port of it,
    whose outputs the parity tests hold to samplerate's): fed either, the kernel gives the same
    outputs bit for bit."""
    from jaxmir.resample import positions, products

    plan = positions.plan_of(44100, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    count = products.matmul_count(plan, music.shape[0])
    centre, frac = positions.exact_positions(plan, 0, 0.0,
                                             products.whole_groups(shape, plan, count))
    given = positions.fixed_point(plan, centre, frac)
    closed = products.matmul_outputs(plan, shape, music, count)
    assert closed is not None and closed.shape == (count,)
    np.testing.assert_array_equal(closed, products.matmul_outputs(plan, shape, music, count, given))


@pytest.mark.parametrize("rate, larger", [(44100, "after"), (96000, "before")])
def test_the_drift_bound_holds_on_either_side_of_the_anchor(rate, larger, monkeypatch):
    """The kernel checks its outputs' drift from their anchors against the bound on both sides:
    with the bound at the drift of the side that drifts less, the other side's outputs send
    the call back (44.1 kHz drifts more after its anchors, 96 kHz before them); at the larger
    drift the call is used. The drifts are libsamplerate's positions, computed on the host."""
    from jaxmir.resample import positions, products

    plan = positions.plan_of(rate, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    x = np.random.default_rng(3).uniform(-0.5, 0.5, 2 * rate).astype(np.float32)
    count = products.matmul_count(plan, x.shape[0])
    centre, frac = positions.exact_positions(plan, 0, 0.0,
                                             products.whole_groups(shape, plan, count))
    rows, period, inc = shape.rows, plan.period, plan.increment
    at = positions.fixed_point(plan, centre, frac).reshape(-1, rows, period)
    at = at - (np.arange(rows) * (plan.advance * inc))[:, None]
    middle = at[:, rows // 2]
    anchor = middle // inc * inc + (middle % inc + products._GRID // 2) // products._GRID \
        * products._GRID
    drift = at - anchor[:, None, :]
    before, after = -int(drift.min()), int(drift.max())
    assert (after > before) == (larger == "after") and min(before, after) > 0
    for bound, used in ((min(before, after), False), (max(before, after), True)):
        monkeypatch.setattr(products, "_DELTA_LIMIT", bound)    # read by the kernel at trace time
        products._matmul_kernel.clear_cache()
        try:
            assert (products.matmul_outputs(plan, shape, x, count) is not None) == used, bound
        finally:
            monkeypatch.undo()
            products._matmul_kernel.clear_cache()


@pytest.mark.parametrize("bad, parallel", [(2, False), (1, False), (1, True)])
def test_one_call_out_of_the_bounds_sends_the_whole_conversion_back(music, monkeypatch, bad,
                                                                    parallel):
    """A conversion of several kernel calls is used only if every call kept to the bounds:
    one call out of them (the ``bad``-th of two to return, its outputs as the real kernel gives
    them) makes the whole of it ``None``, for the exact kernels to redo, whether one thread
    makes the calls or the lanes (``parallel``) share them."""
    import threading

    from jaxmir.resample import positions, products

    x = np.tile(music, 2)                             # 6 s: two calls of ~3.8 s of output
    plan = positions.plan_of(44100, 16000, "sinc_medium")
    shape = products.matmul_shape(plan)
    count = products.matmul_count(plan, x.shape[0])
    assert shape.groups * shape.rows * plan.period < count
    assert products.matmul_outputs(plan, shape, x, count).shape == (count,)
    kernel, flags, returning = products._matmul_kernel, [], threading.Lock()

    def one_out_of_bounds(*args, **kwargs):
        out, fits = kernel(*args, **kwargs)
        with returning:
            flags.append(bool(fits))
            kth = len(flags)
        return out, fits if kth != bad else False

    monkeypatch.setattr(products, "_matmul_kernel", one_out_of_bounds)
    assert products.matmul_outputs(plan, shape, x, count, parallel=parallel) is None
    assert flags == [True, True]                      # the real kernel's calls were in bounds


def test_measured_table_is_verified_in_numpy(caplog, monkeypatch):
    """The table measured from samplerate is checked by NumPy sums (no JAX program compiled
    before a process's first sample), which equal samplerate's outputs and refuse a table
    with one entry 1% off."""
    import jax

    from jaxmir.resample import positions, table as tables

    samplerate = require("samplerate")

    _, control = compiled_programs(
        caplog, lambda: jax.jit(lambda v: v * 3.0)(np.arange(7.0)).block_until_ready())
    assert control                                            # the log does show compilations

    def no_scan():
        raise AssertionError("the measurement ran the positions' JAX scan")
    monkeypatch.setattr(positions, "_sequential_scan", no_scan)   # compiled earlier or not
    monkeypatch.setattr(positions, "_python_steps_left", positions._PYTHON_STEPS)  # a new process
    _, programs = compiled_programs(caplog, lambda: tables.coefficients.__wrapped__("sinc_medium"))
    assert programs == []              # the default filter, measured and verified afresh
    table, programs = compiled_programs(caplog,
                                        lambda: tables.coefficients.__wrapped__("sinc_fastest"))
    assert programs == []
    plan = positions.plan_of(44100, 16000, "sinc_fastest")
    noise = np.random.default_rng(5).uniform(-1, 1, 3000).astype(np.float32)
    ours = tables._reference(plan, noise, table)
    theirs = samplerate.resample(noise, plan.ratio, "sinc_fastest")
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= TOL
    # within the first zero crossing (index_inc = 128): a large entry. 1e-4 off, it moves the
    # noise's outputs by up to 7e-5 (70 times the parity bound), and must be refused too.
    for off in (1.01, 1.0001):
        wrong = table.copy()
        wrong[40] *= off
        with pytest.raises(AudioError, match="does not reproduce"):
            tables._verify("sinc_fastest", wrong, samplerate)
    # 2e-5 off, one entry moves the downsampled noise by ~7e-6 (its outputs weigh each entry by
    # the ratio, 0.36), under the check's 1e-5, and the upsampled by ~1.8e-5: that one refuses it
    wrong = table.copy()
    wrong[1000] += np.float32(2e-5)
    with pytest.raises(AudioError, match=r"does not reproduce it \(16000 -> 44100 Hz\)"):
        tables._verify("sinc_fastest", wrong, samplerate)


def test_device_tables_compile_nothing(caplog):
    """The filter and phase tables reach the device as transfers: ``jnp.asarray`` of a NumPy
    array would compile a program per shape (~8 ms each at a process's start)."""
    import jax

    from jaxmir.resample import positions, products, table as tables

    # programs compiled earlier in this process must not hide any (last in the file: the
    # tests after it in this process compile their programs again)
    jax.clear_caches()
    plan = positions.plan_of(44100, 16000, "sinc_medium")
    (value, rise), programs = compiled_programs(
        caplog, lambda: products._phase_table.__wrapped__(plan, products.matmul_shape(plan)))
    assert programs == []
    assert value.dtype == rise.dtype == np.float32
    if jax.default_backend() == "cpu":
        # and without a copy (~20 MB a plan, one for all the lanes' devices): the host arrays,
        # as a call's stretch of samples, are aligned as XLA:CPU's buffers are
        host = products._host_phase_table(plan, products.matmul_shape(plan))
        assert [part.unsafe_buffer_pointer() for part in (value, rise)] == [
            part.ctypes.data for part in host]
        for length in (1000, 200_000):
            stretch = products._stretch(np.ones(150_000, np.float32), -7, length)
            assert jax.device_put(stretch).unsafe_buffer_pointer() == stretch.ctypes.data
    (table, slopes), programs = compiled_programs(
        caplog, lambda: tables._as_device(tables.coefficients("sinc_medium")))
    assert programs == []
    assert table.dtype == slopes.dtype == np.float32
    _, control = compiled_programs(caplog, lambda: jax.numpy.asarray(np.zeros(13, np.float32)))
    assert control                     # the log does show such a program


def test_a_closed_linear_interpolator_gives_no_more_samples():
    """A second close() made the last call's samples again, a push after it more samples."""
    from jaxmir.audio import prepare_audio
    from jaxmir.resample import essentia_ratio
    from jaxmir.resample.linear import LinearInterpolator

    x = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    interpolator = LinearInterpolator(essentia_ratio(44100, 16000))
    made = np.concatenate([interpolator.push(x), interpolator.close()])
    assert np.array_equal(made, prepare_audio(x, 44100, resampler="essentia-q4"))  # Resample's
    assert interpolator.close().shape == (0,)
    with pytest.raises(AudioError, match="push after close"):
        interpolator.push(x)
