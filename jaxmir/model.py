"""The user-facing :class:`Model`: a spec, its Flax module and variables, labels and provenance."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence, overload

from numpy.typing import ArrayLike, DTypeLike

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir import describe as describing
from jaxmir import catalog, pipeline
from jaxmir import stream as streaming
from jaxmir.checks import is_floating, is_whole
from jaxmir.errors import InputError
from jaxmir.labels import check_labels, label_list, placeholder_labels
from jaxmir.models import build_module, has_heavy_head, shares_overlap, with_overlap_hop
from jaxmir.models.runner import Tap, is_staged, platform_of, run_patches_jit
from jaxmir.spec import Frontend, ModelSpec

# Input values per step of Model.apply: 4 patches of MusiCNN's or VGG's [187, 96]. Small steps keep
# activations in cache: on a 2-core CPU, VGG runs ~2x faster per patch in steps of 4 than in one
# batch of 64, VGGish ([96, 64] patches) 1.3x faster in steps of 8 (its dense head, 67 M weights,
# runs once per batch: models.layers.BODY). A module that is not staged and has a heavy head
# (models.has_heavy_head) runs whole batches instead: each step would read all its weights again.
# So do models on an accelerator, whose parallel units a step of a few patches would leave idle.
APPLY_STEP_VALUES = 4 * 187 * 96

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # what Model.astype accepts


def check_dtype(dtype) -> str:
    """The name of ``dtype`` (a name, or a NumPy/JAX dtype such as ``jnp.bfloat16``) if
    :meth:`Model.astype` accepts it; otherwise an :class:`InputError`."""
    name = dtype
    if not isinstance(dtype, str):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; accepted: {', '.join(map(repr, DTYPES))}")
    return name


def default_chunk(module: nn.Module, input_shape: tuple[int, ...],
                  variables: Mapping) -> int | None:
    """Patches per step in :meth:`Model.apply` (a power of two), or ``None`` for whole batches."""
    if platform_of(variables) != "cpu":
        return None
    if not is_staged(module) and has_heavy_head(variables):
        return None
    patches = max(1, APPLY_STEP_VALUES // int(np.prod(input_shape)))
    return 1 << (patches.bit_length() - 1)


def _names(outputs: Iterable[str] | str | None, keyword: str) -> tuple[str, ...]:
    if outputs is None:
        return ("predictions",)
    if isinstance(outputs, str):
        return (outputs,)
    names = tuple(outputs) if isinstance(outputs, Iterable) else None
    if not names or not all(isinstance(name, str) for name in names):
        raise InputError(f"{keyword}={outputs!r}: expected an output name or a list of names, "
                         "such as 'predictions' or ['embeddings', 'model/Sigmoid']")
    return names


def _on_device(value):
    """``value`` as a JAX array of its own. A transfer compiles nothing, where ``jnp.asarray``
    compiles a program per shape (~8 ms each at a process's start); NumPy arrays are copied
    first, since on a CPU the transfer may share their memory, and the spec's arrays stay the
    caller's to change."""
    return jax.device_put(np.array(value) if isinstance(value, np.ndarray) else value)


MAX_PATCH_VALUE = 1e12  # log-mel patches lie within about +-20


def check_patch_values(patches: np.ndarray, what: str = "patches",
                       expected: str = "log-mel patches (within about +-20)") -> None:
    """:class:`InputError` for NaN or infinite values in float32 ``patches``, or values beyond
    :data:`MAX_PATCH_VALUE`, which overflow the model's float32 sums (3e38 turns the outputs NaN);
    ``what``, ``expected``: what the model takes (a head: embeddings)."""
    peak = float(np.max(np.abs(patches)))  # NaN if any value is
    if not np.isfinite(peak):
        raise InputError(f"{what} hold NaN or infinite values (in float32); the outputs would be "
                         "NaN")
    if peak > MAX_PATCH_VALUE:
        raise InputError(f"{what} reach {peak:.7g}, beyond {MAX_PATCH_VALUE:.0e}: expected "
                         f"{expected}; such values overflow the model's float32 sums and turn "
                         "its outputs NaN")


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model ready to run: ``Model.apply(patches, outputs=[...])``,
    ``Model.predict(audio, rate)``.

    Build one with :func:`jaxmir.load` (or :meth:`from_spec`).

    Attributes:
      spec: the saved-model spec (:class:`jaxmir.spec.ModelSpec`).
      module: the Flax module (``module.apply(variables, patches)`` is the pure function).
      variables: ``{"params": ..., "batch_stats": ...}``, a plain tree of JAX arrays.
      labels: one name per output class.
      source: where the model came from (a path or a shipped name).
      metadata: Essentia's metadata JSON (heads), provenance, composition.
      graph_output: for a model loaded from a ``.pb``, the output node its graph gives by
        itself (``""`` where it holds none of the usual ones); ``None`` otherwise.
    """

    spec: ModelSpec
    module: nn.Module
    variables: Mapping[str, Any]
    labels: tuple[str, ...]
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    graph_output: str | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec, labels: Sequence[str] | None = None, source: str = "",
                  metadata: Mapping[str, Any] | None = None,
                  graph_output: str | None = None) -> "Model":
        """The model a spec describes; ``labels`` default to ``class_0 .. class_{n-1}``."""
        width = spec.output_width
        labels = tuple(str(label) for label in labels) if labels is not None else \
            placeholder_labels(width)
        check_labels(labels, width)
        variables = jax.tree_util.tree_map(_on_device, dict(spec.variables))
        return cls(spec, build_module(spec.architecture, spec.config), variables, labels,
                   str(source), dict(metadata or {}), graph_output)

    def with_labels(self, labels: Sequence[str]) -> "Model":
        """The same model with other class names (as many as outputs)."""
        labels = tuple(label_list(labels))  # a string was taken as a label per character
        check_labels(labels, self.output_width())
        return dataclasses.replace(self, labels=labels)

    # -- introspection ------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """``"musicnn"``, ``"vgg"``, ``"vggish"``, ``"head"`` or ``"composed"``."""
        return self.spec.architecture

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input without the batch axis, e.g. ``(187, 96)`` or ``(200,)`` for a head."""
        return tuple(self.spec.input_shape)

    @property
    def frontend(self) -> Frontend | None:
        """The audio front-end the model expects; ``None`` for a model that takes no audio (a
        head on embeddings, a graph whose input is not a log-mel patch)."""
        return self.spec.frontend

    @property
    def name(self) -> str:
        """What messages call the model: a shipped model's name (``msd-musicnn``, not the path of
        its weights in the package), else :attr:`source`."""
        return (catalog.name_of(self.source) if self.source else None) or self.source

    @property
    def dtype(self) -> str:
        """``"bfloat16"`` when the variables are stored in bfloat16 (:meth:`astype`), else
        ``"float32"``."""
        return "bfloat16" if any(leaf.dtype == jnp.bfloat16
                                 for leaf in jax.tree_util.tree_leaves(self.variables)) \
            else "float32"

    def output_width(self) -> int:
        """Values per patch of the model's output (``output_name``): 50 tags, 2 classes..."""
        return self.spec.output_width

    @property
    def output_names(self) -> list[str]:
        """Every name ``apply`` accepts, once: friendly names, then the graph's node names (a
        graph may name a node as jaxmir names an output, VGGish's ``pool1``)."""
        return sorted(self.spec.aliases) + sorted(set(self.spec.node_map) - set(self.spec.aliases))

    def num_params(self) -> int:
        """Weights and batch-norm statistics in all."""
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.variables)))

    def describe(self) -> str:
        """A few lines for people: architecture, layers, input, output, labels, output names."""
        return describing.describe(self)

    def __repr__(self) -> str:
        return (f"Model({self.architecture}, input {list(self.input_shape)}, "
                f"{len(self.labels)} outputs, {self.num_params():,} parameters)")

    # -- running ------------------------------------------------------------------------
    def resolve_output(self, name: str) -> Tap:
        """The tap (sown intermediate) and graph shape behind an output name."""
        if name in self.spec.aliases:
            return self.spec.aliases[name], None
        if name in self.spec.node_map:
            tap, shape = self.spec.node_map[name]
            return tap, tuple(shape)
        base = name.partition(":")[0]
        if base != name and base in self.spec.node_map and name.endswith(":0"):
            return self.resolve_output(base)
        raise InputError(f"unknown output '{name}'; this {self.architecture} model has: "
                         + ", ".join(self.output_names))

    def node_name(self, name: str) -> str | None:
        """The graph node behind output ``name`` (``"embeddings"`` -> ``"model/dense/BiasAdd"``
        for MusiCNN; a node name is its own), or ``None`` when no node of the graph gives it."""
        tap, _ = self.resolve_output(name)
        if name in self.spec.node_map:
            return name
        return next((node for node, (t, _) in self.spec.node_map.items() if t == tap), None)

    def resolve_outputs(self, outputs: Iterable[str] | str | None, keyword: str = "output"
                        ) -> tuple[tuple[str, ...], tuple[Tap, ...]]:
        """Output names (default ``("predictions",)``) and their taps; ``keyword`` names the
        argument they came in, for errors."""
        names = _names(outputs, keyword)
        return names, tuple(self.resolve_output(name) for name in names)

    def check_patches(self, patches: ArrayLike) -> jax.Array:
        """Validate ``[batch, *input_shape]`` floating-point patches."""
        if not hasattr(patches, "shape") or not hasattr(patches, "dtype"):
            patches = np.asarray(patches)
        dtype = np.dtype(patches.dtype)
        shape_text = ", ".join(map(str, self.input_shape))
        head = self.architecture == "head"
        what, takes = ("embeddings", "embeddings") if head else ("patches", "log-mel patches")
        if not is_floating(dtype):
            raise InputError(f"{what} have dtype {dtype}; expected floating point (float32) "
                             f"{takes} of shape [batch, {shape_text}]")
        if tuple(patches.shape[1:]) != self.input_shape and patches.ndim > 1:
            # Essentia squeezes every size-1 axis but the batch before feeding a graph
            squeezed = tuple(d for d in patches.shape[1:] if d != 1)
            if squeezed == self.input_shape:
                patches = patches.reshape((patches.shape[0],) + squeezed)
        if (tuple(patches.shape[1:]) != self.input_shape
                or patches.ndim != len(self.input_shape) + 1):
            raise InputError(f"patches have shape {list(patches.shape)}; this model takes "
                             f"[batch, {shape_text}]")
        if patches.shape[0] == 0:
            raise InputError("an empty batch of patches (batch size 0)")
        # as predict refuses NaN audio; a JAX array is not read back from its device to check.
        # Checked in float32, as the model reads them (float64 1e39 is infinite there).
        if isinstance(patches, np.ndarray):
            with np.errstate(over="ignore"):
                patches = patches.astype(np.float32, copy=False)
            check_patch_values(patches, what, takes if head else f"{takes} (within about +-20)")
        return jnp.asarray(patches, jnp.float32)

    def apply(self, patches: ArrayLike, outputs: Iterable[str] | str | None = None,
              chunk: int | None = -1, overlap_hop: int = 0) -> dict[str, jax.Array]:
        """Run the model on patches ``[batch, time, mel]`` (or embeddings ``[batch, features]``).

        Args:
          patches: ``[batch, *input_shape]``, float32.
          outputs: names to return: ``"predictions"`` (default), musicnn's
            feature names (``timbral``, ``temporal``, ``cnn1``..``cnn3``,
            ``mean_pool``, ``max_pool``, ``penultimate``; ``pool1``.. for VGG),
            ``embeddings``, ``logits``, or the graph's node names such as
            ``model/dense/BiasAdd``.
          chunk: patches per step; ``-1`` (default) picks by model size
            (:func:`default_chunk`), ``None`` runs the batch at once.
          overlap_hop: ``> 0`` when the patches are consecutive patches of one
            signal, ``overlap_hop`` frames apart (Essentia cuts them 93 apart):
            MusiCNN then computes its timbral convolutions once for the frames
            neighbouring patches share, in steps of 8 patches (``chunk`` is not
            used). NumPy patches are checked to overlap so; other models run as usual.

        Returns:
          ``{name: array}`` with the batch axis first; graph node names keep
          the node's shape in the graph.
        """
        names, taps = self.resolve_outputs(outputs, "outputs")
        patches = self.check_patches(patches)
        if chunk is not None and not (is_whole(chunk, 1) or is_whole(chunk, -1, -1)):
            # 0 divided by zero; -5, 1.5 failed in JAX
            raise InputError(f"chunk {chunk!r}: a whole number of patches >= 1, -1 (by the "
                             "model's size) or None (the batch at once)")
        chunk = None if chunk is None else int(chunk)  # np.uint8(2): (-n) % chunk overflowed
        if overlap_hop:
            return dict(zip(names, self._apply_overlapping(patches, taps, overlap_hop)))
        chunk = (default_chunk(self.module, self.input_shape, self.variables) if chunk == -1
                 else chunk)
        return dict(zip(names, run_patches_jit(self.module, self.variables, taps, patches, chunk)))

    def _apply_overlapping(self, patches: jax.Array, taps: tuple[Tap, ...], hop: int
                           ) -> tuple[jax.Array, ...]:
        """:meth:`apply` on consecutive patches ``hop`` frames apart (see ``overlap_hop``)."""
        n, length = patches.shape[0], patches.shape[1]
        if patches.ndim != 3 or not is_whole(hop, 1, length - 1):
            raise InputError(f"overlap_hop must be a whole number of frames in 1..{length - 1} "
                             f"for patches [batch, time, mel]; got {hop!r} for "
                             f"{list(patches.shape)}")
        hop = int(hop)
        if not isinstance(patches, jax.core.Tracer) and not np.array_equal(
                np.asarray(patches[:-1, hop:]), np.asarray(patches[1:, :length - hop])):
            raise InputError(f"overlap_hop={hop}: these patches are not consecutive patches "
                             f"{hop} frames apart (patch p's frames from {hop} on must be patch "
                             "p + 1's first frames); leave overlap_hop at 0 for any patches")
        module = with_overlap_hop(self.module, hop)
        if not shares_overlap(module):  # as apply runs them: the same steps, the same bits
            chunk = default_chunk(self.module, self.input_shape, self.variables)
            return run_patches_jit(self.module, self.variables, taps, patches, chunk)
        step = min(n, streaming.BATCH)
        total = -(-n // step) * step
        # The signal's frames, then zeros for the patches that fill the last step: they continue
        # the sequence, so that the last real patches still read their own frames.
        frames = jnp.concatenate([patches[:-1, :hop].reshape(-1, patches.shape[2]), patches[-1],
                                  jnp.zeros(((total - n) * hop, patches.shape[2]), patches.dtype)])
        index = hop * np.arange(total)[:, None] + np.arange(length)[None, :]
        values = run_patches_jit(module, self.variables, taps, frames[index], step)
        return tuple(value[:n] for value in values)

    def __call__(self, patches: ArrayLike, outputs: str | Iterable[str] | None = None
                 ) -> dict[str, jax.Array]:
        """:meth:`apply`: ``model(patches)`` as a Flax module is called."""
        return self.apply(patches, outputs)

    def astype(self, dtype: DTypeLike | str) -> "Model":
        """This model in ``"bfloat16"`` (opt-in) or ``"float32"`` (the default, for parity); the
        dtypes themselves (``jnp.bfloat16``, ``np.float32``) work too.

        In bfloat16 the variables are stored and the patches computed in bfloat16
        (8-bit mantissas; the log-mel front-end stays float32); outputs come back
        as float32. Its deviation from float32 is printed by
        ``benchmarks/bench_precision.py``: ~1e-2 on tags, far from parity's 1e-5.
        Float32 runs every product at full precision (never TF32 on GPUs).
        """
        target = DTYPES[check_dtype(dtype)]
        floating = [leaf for leaf in jax.tree_util.tree_leaves(self.variables)
                    if jnp.issubdtype(leaf.dtype, jnp.floating)]
        if all(leaf.dtype == target for leaf in floating):
            return self  # already in ``dtype``: callers need not check

        def cast(leaf):
            return leaf.astype(target) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
        return dataclasses.replace(self, variables=jax.tree_util.tree_map(cast, self.variables))

    # -- from audio (jaxmir.pipeline) ------------------------------------------------------
    def features(self, audio: ArrayLike, sample_rate: int, compat: str = "essentia",
                 resampler: str = "essentia") -> np.ndarray | jax.Array:
        """Log-mel frames of a signal, as this model's front-end computes them.

        Args:
          audio: ``[n_samples]`` or ``[n_samples, channels]`` (float in [-1, 1]
            or integer PCM) at ``sample_rate``; resampled to 16 kHz if needed.
          sample_rate: the rate of ``audio`` in Hz (required, never guessed).
          compat: front-end mode, see :func:`jaxmir.frontends.musicnn_logmel`.
          resampler: ``"essentia"`` (Essentia's ``MonoLoader``), ``"samplerate"``,
            ``"soxr"`` or ``"essentia-q4"``, as :func:`jaxmir.load_audio` takes it.

        Returns:
          float32 ``[n_frames, 96]`` (MusiCNN/VGG, a frame every 16 ms) or
          ``[n_frames, 64]`` (VGGish, every 10 ms); a NumPy array (a JAX
          array when ``audio`` is traced).
        """
        return pipeline.features(self, audio, sample_rate, compat=compat, resampler=resampler)

    # One name gives an array, a list or tuple of names a dict; what a checker cannot tell
    # apart (str | list[str], any other iterable) either.
    @overload
    def predict(self, audio: ArrayLike, sample_rate: int, output: str | None = None,
                patch_hop: int | None = None, last_patch: str = "discard", pad: str | None = None,
                compat: str = "essentia", resampler: str = "essentia") -> np.ndarray | jax.Array:
        ...

    @overload
    def predict(self, audio: ArrayLike, sample_rate: int, output: list[str] | tuple[str, ...],
                patch_hop: int | None = None, last_patch: str = "discard", pad: str | None = None,
                compat: str = "essentia",
                resampler: str = "essentia") -> dict[str, np.ndarray | jax.Array]:
        ...

    @overload
    def predict(self, audio: ArrayLike, sample_rate: int,
                output: str | Iterable[str] | None = None, patch_hop: int | None = None,
                last_patch: str = "discard", pad: str | None = None, compat: str = "essentia",
                resampler: str = "essentia"
                ) -> np.ndarray | jax.Array | dict[str, np.ndarray | jax.Array]:
        ...

    def predict(self, audio: ArrayLike, sample_rate: int,
                output: str | Iterable[str] | None = None, patch_hop: int | None = None,
                last_patch: str = "discard", pad: str | None = None, compat: str = "essentia",
                resampler: str = "essentia"
                ) -> np.ndarray | jax.Array | dict[str, np.ndarray | jax.Array]:
        """The output for every patch of a signal, as Essentia's TensorflowPredictMusiCNN/VGGish.

        Args:
          audio: ``[n_samples]`` or ``[n_samples, channels]`` at ``sample_rate``
            (a traced 16-kHz ``[n_samples]`` array works under ``jax.grad``).
          sample_rate: the rate of ``audio`` in Hz (required, never guessed).
          output: any name :meth:`apply` accepts (default ``"predictions"``), or a
            sequence of names (then a dict by name is returned, for one name too).
          patch_hop: frames between patches (default 93; 0 = the patch size).
          last_patch: ``"discard"`` (Essentia's default) or ``"repeat"``.
          pad: ``None`` (too short a signal raises InputError), ``"zero"`` or
            ``"repeat"``: one padded patch for a signal shorter than a patch.
          compat: front-end mode (``"essentia"``; ``"musicnn"``/``"google"``).
          resampler: ``"essentia"`` (Essentia's ``MonoLoader``), ``"samplerate"``,
            ``"soxr"`` or ``"essentia-q4"`` (``resampleQuality=4``), for audio not at 16 kHz,
            as :func:`jaxmir.load_audio` takes it.

        Returns:
          ``[n_patches, ...]``, e.g. ``[n_patches, 50]`` for MusiCNN's tags: a
          NumPy array (a JAX array when ``audio`` is traced, e.g. under ``jax.grad``);
          ``{name: [n_patches, ...]}`` for a sequence of names.
        """
        return pipeline.predict(self, audio, sample_rate, output, patch_hop=patch_hop,
                                last_patch=last_patch, pad=pad, compat=compat, resampler=resampler)

    @overload  # as predict's
    def stream(self, sample_rate: int, output: str | None = None, patch_hop: int | None = None,
               last_patch: str = "discard", pad: str | None = None, compat: str = "essentia",
               resampler: str = "essentia", eager: bool = True,
               resample_step: int | None = None) -> streaming.Stream[np.ndarray]:
        ...

    @overload
    def stream(self, sample_rate: int, output: list[str] | tuple[str, ...],
               patch_hop: int | None = None, last_patch: str = "discard", pad: str | None = None,
               compat: str = "essentia", resampler: str = "essentia", eager: bool = True,
               resample_step: int | None = None) -> streaming.Stream[dict[str, np.ndarray]]:
        ...

    @overload
    def stream(self, sample_rate: int, output: str | Iterable[str] | None = None,
               patch_hop: int | None = None, last_patch: str = "discard", pad: str | None = None,
               compat: str = "essentia", resampler: str = "essentia", eager: bool = True,
               resample_step: int | None = None) -> streaming.Stream:
        ...

    def stream(self, sample_rate: int, output: str | Iterable[str] | None = None,
               patch_hop: int | None = None, last_patch: str = "discard", pad: str | None = None,
               compat: str = "essentia", resampler: str = "essentia",
               eager: bool = True, resample_step: int | None = None) -> streaming.Stream:
        """Run the model on audio that arrives in chunks: outputs as soon as each patch is complete.

        ``stream.push(chunk)`` returns ``[k, ...]`` (k >= 0) for the patches the
        chunk completed, ``stream.close()`` the rest; ``stream.times`` lists
        every returned patch's start in seconds. Concatenated, they equal
        :meth:`predict` of the whole signal (within 1e-6 on predictions), with
        the same arguments; a signal shorter than a patch (without ``pad``) gives
        none, ``[0, ...]``, where ``predict`` raises :class:`ShortAudioError`.
        Chunks are ``[n]`` or ``[n, channels]`` (1 or 2 channels, float or integer
        PCM), of any size, at ``sample_rate``; every chunk keeps the first one's
        channels and dtype. See :mod:`jaxmir.stream`.
        ``eager=False`` (audio that is all there, read in pieces, such as a long
        file) runs patches only in whole batches until ``close``: the same
        outputs from fewer, fuller model calls, so later than they could come.

        ``resample_step`` (16-kHz samples; Essentia's resampler at the rates its JAX kernels
        serve) trades latency for CPU time: the resampler runs once the chunks since its last
        run make that many outputs. The default (``None``: 2048, 128 ms) holds a patch back by
        at most that much plus a chunk; 0 runs it at every chunk, as soon as its outputs are
        final, at several times the CPU cost for small chunks (each run costs ~1 ms). The
        outputs are the same either way. libsamplerate and soxr run at every chunk: a
        ``resample_step`` given with ``resampler="samplerate"`` or ``"soxr"`` raises
        :class:`~jaxmir.errors.InputError`; at rates the JAX kernels do not serve
        (:func:`jaxmir.resample.accelerated`) Essentia's converter is libsamplerate, and the step
        has nothing to hold back.

        Example::

            stream = model.stream(44100)
            for chunk in chunks:            # [n, 2] int16 blocks, any n
                tags = stream.push(chunk)   # [k, 50], k >= 0
                starts = stream.times[len(stream.times) - len(tags):]
            rest = stream.close()
        """
        return streaming.Stream(self, sample_rate, output, patch_hop=patch_hop,
                                last_patch=last_patch, pad=pad, compat=compat,
                                resampler=resampler, eager=eager, resample_step=resample_step)
