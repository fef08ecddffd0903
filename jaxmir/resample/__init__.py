"""libsamplerate's sinc converters in JAX: one-shot and streaming, equal to ``samplerate``.

This reproduces ``samplerate.resample(x, ratio, "sinc_medium")`` (and ``sinc_fastest``,
``sinc_best``) with Essentia's float32 ratio ``float32(out_rate) / float32(in_rate)``, the
converter Essentia's ``MonoLoader`` uses, by doing the same arithmetic as libsamplerate's
``src_sinc.c`` (``src_simple`` with ``end_of_input``, one call over the whole signal):

* Output positions: the C loop keeps a fractional input position ``x`` in a double and
  steps ``x = frac(x + 1/ratio)`` once per output, carrying the integer part into the
  buffer index. Only the addition can round, so :func:`.positions.exact_positions` computes the
  exact sequence in integers (units of 2^-60, closed form ``frac(x0 + k * (1/ratio))``) and checks
  in integers that every one of those additions is exact in double precision; when one
  is not (e.g. 22.05 kHz -> 16 kHz), it runs the same double-precision recurrence as a
  ``lax.scan`` in float64. The outputs therefore sit at libsamplerate's positions, not the
  ideal ``k / ratio``.
* Filter phase: the fixed-point filter index with ``SHIFT_BITS = 12``:
  ``increment = lrint(index_inc * min(ratio, 1) * 4096)`` and, per output,
  ``start = lrint(x * index_inc * min(ratio, 1) * 4096)`` (round half to even, as
  ``lrint``). Left taps ``v[c - m]`` use filter index ``start + m * increment`` (``<= max``);
  right taps ``v[c + 1 + m]`` use ``increment - start + m * increment`` (``> 0`` and
  ``<= max``), ``max = coeff_half_len << 12``; the coefficient is the table entry
  ``i = index >> 12`` linearly interpolated towards ``i + 1`` by ``(index & 4095) / 4096``.
* Gain ``(index_inc * min(ratio, 1)) / index_inc`` on the sum of both halves.
* Start-up: ``half = lrint((coeff_half_len + 2) / index_inc / min(ratio, 1)) + 1`` zeros
  before the first input sample; zeros after the last one.
* Length: ``ceil(n * ratio)`` (the output buffer python-samplerate allocates), cut where
  libsamplerate's termination test ``b_current + x + (1/ratio + 1e-20) >= b_real_end``
  first holds (evaluated in double with absolute buffer positions; libsamplerate uses
  buffer-relative ones, which round differently only if the test is within ~1e-9 of a tie).
  That is the test of Essentia 2.1b6's libsamplerate; 0.2's (python-samplerate's) reads ``>``
  and makes one output more where the sum meets the end exactly: at power-of-two ratios
  (8 kHz -> 16 kHz at every length, 32 kHz -> 16 kHz at even ones), and at ratios such as 3
  (16 -> 48 kHz) whose rounded sums land on it (:func:`.positions.essentia_count`). jaxmir ends
  where Essentia does.

Three kernels compute the sums. NumPy input at the common rates (22.05, 24, 32, 44.1, 48,
96 kHz... to 16 kHz: downsampling with a short exact period) takes the matrix-product kernel
(:mod:`.products`, see its comment): positions in exact int64 (on the device where the
recurrence never rounds, from the host's recurrence where it does), value sums in float64 as
libsamplerate's, and a first-order expansion of the
coefficients in each output's drift from its group's anchor (error measured: 1.2e-7 and 4.2e-7 on
the music fixtures, 5.1e-7 on full-scale noise); 53-61% of its outputs equal libsamplerate's
bit for bit. Other periodic rates take the float32 polyphase
kernel, the rest the per-output kernel; :func:`resample_jax` (traceable, differentiable)
always takes one of those two.

The float32 kernels sum in float32 where libsamplerate sums in double: the coefficients are
float32 table entries interpolated with a 12-bit fraction, so each product carries a
relative error of a few float32 ulps and a sum of ~250 of them (|coefficient| sum ~2.5 for
the medium filter, |samples| <= 1) stays around 1e-7; the tests measure < 1e-6 against
``samplerate`` on real music.

Coefficient tables. The project must not ship numbers extracted from libsamplerate's
headers, and the headers only name the design tool (``make_src_filter(cycles, incr, atten)``,
whose window and rounding are not in the repository), so regenerating the tables to
float32 exactness is not possible. Instead the tables are *measured* from the installed
``samplerate`` library at first use (:func:`coefficients`): upsampling a unit impulse by
``index_inc / p`` (gain 1, filter indices landing on exact multiples of 4096) makes
output samples equal to single float32 table entries, which the exact position model
above attributes to their table index. Every entry is seen twice (left and right half)
and must agree; the result is then checked by resampling a random signal both up and
down and comparing with ``samplerate`` (in NumPy). The measurement takes ~0.2 s (medium) and is
kept in memory (per process); nothing is written to disk, so a changed ``samplerate``
install can never meet a stale cache. The integers ``index_inc`` and ``coeff_half_len``
of each converter are facts of libsamplerate 0.2.2 (the version python-samplerate
bundles) and are checked by the same verification.
"""

from jaxmir.checks import MAX_RATE, MIN_RATE
from jaxmir.resample.convert import (MAX_MIN_OUTPUTS, MIN_OUTPUTS, SincResampler, check_min_outputs,
                                     resample, resample_jax)
from jaxmir.resample.positions import (MAX_TAPS, QUALITIES, converts, essentia_count,
                                       essentia_ratio, meets_end, plan_of, unflushed_count)
from jaxmir.resample.products import accelerated
from jaxmir.resample.table import coefficients

__all__ = ["MAX_MIN_OUTPUTS", "MAX_RATE", "MAX_TAPS", "MIN_OUTPUTS", "MIN_RATE", "QUALITIES",
           "SincResampler", "accelerated", "check_min_outputs", "coefficients", "converts",
           "essentia_count", "essentia_ratio", "meets_end", "plan_of", "resample", "resample_jax",
           "unflushed_count"]
