"""The Ray engine: the model as a pool of actors, with Ray Data; with GPUs, decoding as Ray tasks.

    ray.data.from_items(paths).map(decode).map_batches(ModelActor, compute=ActorPoolStrategy(...))

Each actor loads and compiles the model once and then takes batches of
decoded files; with GPUs in the cluster there is one actor per GPU, else
``actors`` actors of ``cpus_per_actor`` CPUs each, which decode their batches' files
themselves. :func:`analyze_dataset` is
the Python entry point (a Dataset of paths in, a Dataset of rows with the
Parquet schema of :mod:`jaxmir.collection.outputs` out); the command line
drives :func:`run`, which feeds the same rows to the resumable writers.
Install with ``pip install 'jaxmir[ray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from jaxmir import catalog, interrupts, lazy
from jaxmir.atomic import deferred_interrupts
from jaxmir.collection import compute
from jaxmir.collection.compute import Options
from jaxmir.collection.inputs import Source
from jaxmir.collection.progress import Progress
from jaxmir.collection.outputs import parquet_schema, parquet_table
from jaxmir.collection.rows import Layout, Result, identity, model_fields, same_outputs
from jaxmir.errors import InputError

if TYPE_CHECKING:  # an extra: imported where a run needs it
    import ray.data

CONNECT_TIMEOUT_S = 5.0


def import_ray():
    """``ray`` and ``ray.data``, or an InputError saying how to install them; with a token for an
    explicit ``RAY_ADDRESS`` (:func:`_token_mode`)."""
    _token_mode(os.environ.get("RAY_ADDRESS", ""))
    needed = ("the Ray engine (--engine ray; engine='ray' in Python)",
              "pip install 'jaxmir[ray]' (or pip install 'ray[data]')", InputError)
    ray = lazy.optional("ray", *needed)
    lazy.optional("ray.data", *needed)
    return ray


# What a client sends first on an HTTP/2 connection: the preface, then an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4  # an HTTP/2 frame's type, its header's fourth byte


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as ``(host, port)``."""
    if address.startswith("ray://"):  # Ray Data's streaming fails under Ray Client
        raise InputError(f"RAY_ADDRESS={address!r}: a Ray Client address, which Ray Data does not "
                         "run under; give the head's own address, host:6379 (ray start --head's "
                         "--port)")
    # ray.init takes the address as it is: a scheme or a path the probe dropped failed there
    # ("Unable to parse port number from 6390/")
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or "/" in address:
        raise InputError(f"RAY_ADDRESS={address!r}: expected host:port (no scheme, no path), "
                         "auto or local")
    return host, int(port)


def _names_a_cluster(address: str) -> bool:
    """Whether ``RAY_ADDRESS`` (or ``connect``'s address) names a running cluster's host:port,
    not one to start here."""
    return address not in ("", "local", "auto")


def _token_mode(address: str) -> bool:
    """``RAY_AUTH_MODE=token`` when ``RAY_AUTH_TOKEN`` is given for a cluster's address and no
    mode is: Ray 2.60 sends a token to an address given explicitly only in token mode, which it
    reads when it is imported (so before that). Whether the mode came too late: a program
    imported Ray before, and Ray then sends no token."""
    if _names_a_cluster(address) and os.environ.get("RAY_AUTH_TOKEN") \
            and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        return "ray" in sys.modules
    return False


def _reachable(address: str) -> None:
    """Fail fast (``CONNECT_TIMEOUT_S``) when the cluster's host:port does not answer, or answers
    but not as a Ray head: Ray's GCS and client server speak gRPC, whose HTTP/2 server sends a
    SETTINGS frame first and acknowledges ours. ``ray.init`` on any other listener (a web
    server, Redis on Ray's old port, one that sent SETTINGS and fell silent) retried forever,
    deaf to Ctrl-C. A cluster with TLS (``RAY_USE_TLS``) is not probed."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            connection.sendall(_HTTP2_PREFACE)
            speaks_http2 = _settings_acknowledged(connection, time.monotonic() + CONNECT_TIMEOUT_S)
    except socket.timeout:
        speaks_http2 = False
    except OSError as err:
        raise InputError(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): "
                         f"{err.strerror or err}; start it (ray start --head) or unset "
                         "RAY_ADDRESS to run a local one") from None
    if not speaks_http2:
        raise InputError(f"{host}:{port} (RAY_ADDRESS={address}) answers, but not as a Ray "
                         "cluster (no gRPC reply); give the head's address (ray start --head "
                         "--port, 6379 by default), or unset RAY_ADDRESS to run a local one")


def _settings_acknowledged(connection: socket.socket, deadline: float) -> bool:
    """Whether the server's frames begin with SETTINGS and, within the next few, acknowledge
    the client's (an HTTP/2 server's handshake)."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                part = connection.recv(n - len(data))
            except ConnectionResetError:  # it closed before reading what was sent
                part = b""
            if not part:
                raise socket.timeout  # closed: no handshake
            data += part
        return data

    for frame in range(8):
        header = exactly(9)
        length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        if (frame == 0 and kind != _SETTINGS) or length > 1 << 14:
            return False
        exactly(length)
        if kind == _SETTINGS and flags & 1:  # ACK
            return True
    return False


def connect(address: str | None = None):
    """Join the cluster named by ``address`` (default ``$RAY_ADDRESS``; a local one when unset).

    SIGTERM keeps a handler the caller installed: ``ray.init`` replaces it with one that exits
    with status 15 (the command line's stops with 143, saying what it kept)."""
    address = address if address is not None else os.environ.get("RAY_ADDRESS", "")
    remote = _names_a_cluster(address)
    late = _token_mode(address)
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if remote:
        _reachable(address)
    in_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if in_main else None  # a handler of the caller's:
    sigterm = sigterm if callable(sigterm) else None                 # not the default, nor none
    try:
        with warnings.catch_warnings():
            # Ray starts its processes with fork + exec, which JAX's fork warning does not concern
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                    category=RuntimeWarning)
            # Ray's note to whoever starts a cluster (that a local one uses a token) is not the
            # command's: jaxmir's lines say how the run goes
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
            # a local cluster's start held whole: broken off, ray.init had no node to shut down,
            # and its agents ran on for a minute (a remote one starts no process here)
            with contextlib.nullcontext() if remote else _held_start(ray):
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
    except SystemExit as stop:
        # Ray's handler, in place while ray.init runs, exits with status 15 on SIGTERM, saying
        # nothing and leaving the processes it was starting: the caller's handler stops instead
        if sigterm is None or stop.code != signal.SIGTERM:
            raise
        with contextlib.suppress(Exception):
            ray.shutdown()
        sigterm(signal.SIGTERM, None)
        raise
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = ("; its host speaks HTTP/2, as gRPC does: give the head's own port (ray start "
                "--head --port, 6379 by default; not the Ray Client's 10001, nor another "
                "node's), and if the cluster asks for a token (token authentication, on by "
                "default in recent Ray), give jaxmir the head's: RAY_AUTH_TOKEN=... (`ray "
                "get-auth-token` on the head), or its ~/.ray/auth_token with RAY_AUTH_MODE=token"
                if remote else "")
        if late:
            hint += ("; RAY_AUTH_TOKEN is set, but this program imported ray before jaxmir could "
                     "set RAY_AUTH_MODE=token (Ray reads it at its import, and sends no token "
                     "without it): set RAY_AUTH_MODE=token in the environment, or before `import "
                     "ray`")
        raise InputError(f"cannot connect to the Ray cluster {address or '(local)'}: "
                         f"{err}{hint}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return ray


_NO_PATH_COLUMN = ("analyze_dataset takes a Dataset with a 'path' column (one audio file per "
                   "row; e.g. ray.data.from_items([{'path': p} for p in paths])); its columns: ")


# a decoded row's columns
_DECODED_COLUMNS = ("path", "size_bytes", "mtime_ns", "audio", "error", "warning")


def _decode_row(row: dict, options: Options) -> dict:
    if "path" not in row:  # a Dataset whose columns were unknown before it ran
        raise InputError(_NO_PATH_COLUMN + ", ".join(map(str, row)))
    path = row["path"]
    if isinstance(path, (bytes, os.PathLike)):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path:  # one row's mistake, not the whole Dataset's
        return {"path": repr(path), "size_bytes": -1, "mtime_ns": -1,
                "audio": np.zeros(0, np.float32), "warning": "",
                "error": f"{path!r} is no file's path (the 'path' column holds one audio file's "
                         "path per row)"}
    item = compute.decode(path, options.resampler, options.decoder, options.strict)
    audio = item.audio if item.audio is not None else np.zeros(0, np.float32)
    return {"path": item.source.path, "size_bytes": item.source.size,
            "mtime_ns": item.source.mtime_ns, "audio": audio, "error": item.error or "",
            "warning": item.warning or ""}


class ModelActor:
    """A Ray Data callable class: the model loaded and compiled once, then batches of decoded files
    (with ``decodes``, batches of paths, which it decodes itself one after the other).

    ``raw`` rows keep the per-patch values as they are (``patches`` flattened
    plus ``shape``); otherwise rows follow ``layout`` (the Parquet schema).
    """

    def __init__(self, model: str | None, backbone: str | None, options: Options, layout: Layout,
                 raw: bool = False, decodes: bool = False):
        import jaxmir

        loaded = jaxmir.load(model, backbone=backbone)
        self.model = options.cast(loaded)
        self.options, self.layout, self.raw, self.decodes = options, layout, raw, decodes
        self.schema = parquet_schema(layout)

    def _decoded(self, batch: dict) -> dict:
        """A batch of paths as :func:`_decode_row` gives each, column by column."""
        if "path" not in batch:  # a Dataset whose columns were unknown before it ran
            raise InputError(_NO_PATH_COLUMN + ", ".join(map(str, batch)))
        rows = [_decode_row({"path": path}, self.options) for path in batch["path"]]
        return {key: [row[key] for row in rows] for key in _DECODED_COLUMNS}

    def _results(self, batch: dict) -> list[Result]:
        """The batch's files through the model, their patches packed together; in batch order."""
        items = [compute.Decoded(Source(str(path), int(size), int(mtime_ns)),
                                 None if error else np.asarray(audio, np.float32),
                                 str(error) or None, warning=str(warning) or None)
                 for path, size, mtime_ns, audio, error, warning
                 in zip(batch["path"], batch["size_bytes"], batch["mtime_ns"], batch["audio"],
                        batch["error"], batch["warning"])]
        order = {id(item): number for number, item in enumerate(items)}
        results: list = [None] * len(items)
        for item, outcome in compute.analyze_stream(self.model, items, self.options):
            results[order[id(item)]] = compute.result_of(item, outcome, self.options.output)
        return results

    def __call__(self, batch: dict) -> dict:
        results = self._results(self._decoded(batch) if self.decodes else batch)
        if self.raw:
            return {"path": [r.source.path for r in results],
                    "size_bytes": [r.source.size for r in results],
                    "mtime_ns": [r.source.mtime_ns for r in results],
                    "duration_s": [r.duration_s for r in results],
                    "error": [r.error or "" for r in results],
                    "warning": [r.warning or "" for r in results],
                    "shape": [np.asarray(r.values.shape if r.ok else (0,), np.int64)
                              for r in results],
                    "patches": [np.asarray(r.values, np.float32).ravel() if r.ok
                                else np.zeros(0, np.float32) for r in results]}
        return parquet_table(self.layout, results, self.schema)


def _pool(ray, actors: int | None, cpus_per_actor: float) -> tuple[int, dict]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return actors or gpus, {"num_gpus": 1}
    return actors or 1, {"num_cpus": cpus_per_actor}


def check_reloadable(model, name: str, backbone: str | None) -> None:
    """Refuse ``model`` unless ``jaxmir.load(name, backbone=backbone)``, what the actors run,
    gives the same model: one loaded with ``output=``, relabelled or composed in Python would
    have been replaced in the actors (other values under the same identity) or failed there."""
    import jaxmir
    from jaxmir.errors import JaxmirError

    how = f"jaxmir.load({name!r}" + (f", backbone={backbone!r})" if backbone else ")")
    try:
        with warnings.catch_warnings():  # the caller's load said them already
            warnings.simplefilter("ignore")
            loaded = jaxmir.load(_for_workers(name), backbone=_for_workers(backbone))
    except JaxmirError as err:
        raise InputError(f"the Ray engine's actors load the model as {how}, which fails: {err}; "
                         "give name= and backbone= as jaxmir.load takes them") from None
    differences = [what for what, same in (
        ("its output", loaded.spec.output_name == model.spec.output_name),
        ("its labels", loaded.labels == model.labels),
        ("its layers", loaded.spec.architecture == model.spec.architecture
         and loaded.spec.config == model.spec.config),
    ) if not same]
    if not differences and not _same_values(loaded.astype(model.dtype).variables,
                                            model.variables):  # the actors cast it as given
        differences.append("its weights")
    if differences:
        raise InputError(f"the Ray engine's actors load the model as {how}, which differs from "
                         f"the model given ({', '.join(differences)}); give the name that loads "
                         "it, or run it with the local engine")


def _same_values(a, b) -> bool:
    """Whether two trees of arrays have one structure and equal values."""
    import jax

    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _for_workers(path: str | None) -> str | None:
    """A model file named relative to this process's folder as an absolute path (the workers
    run elsewhere); a shipped name or an absolute path as it is."""
    return os.path.abspath(path) if path and os.path.exists(path) else path


def layout_for(model: str | None, backbone: str | None, options: Options) -> Layout:
    """The columns the command line writes for ``model`` (loaded here to read its labels):
    ``tag``'s, a column per label, when ``options.output`` is ``"predictions"``, else
    ``embed``'s."""
    import jaxmir
    name = model or catalog.default_name()
    options = options.for_command("tag")
    loaded = jaxmir.load(name, backbone=backbone)
    loaded.resolve_output(options.output)  # here, not in every actor
    command = "tag" if options.output == "predictions" else "embed"
    fields = identity(model_fields(name, backbone), loaded, command, options)
    return Layout(command, fields, tuple(loaded.labels) if command == "tag" else (),
                  same_outputs=same_outputs(loaded, options.output))


def check_fits(layout: Layout, fitting: Layout, model: str | None, output: str) -> None:
    """:class:`InputError` unless ``layout`` has the columns of ``fitting`` (the command line's
    layout for ``model``'s ``output``): a table's kind, and a column for each label."""
    if (layout.command, len(layout.labels)) != (fitting.command, len(fitting.labels)):
        def columns(of: Layout) -> str:
            return f"{len(of.labels)} label columns" if of.command == "tag" else "an embedding"
        raise InputError(f"the layout has {columns(layout)}, but {model or 'the model'}'s "
                         f"{output!r} gives {columns(fitting)}: give the layout ray_engine."
                         "layout_for(model, backbone, options) makes, or none")


def analyze_dataset(paths: "ray.data.Dataset", model: str | None, options: Options,
                    layout: Layout | None = None, *, backbone: str | None = None,
                    actors: int | None = None, cpus_per_actor: float = 1.0, batch_size: int = 4,
                    raw: bool = False) -> "ray.data.Dataset":
    """A Dataset of per-file rows (the Parquet schema of ``layout``) from a Dataset of paths.

    Args:
      paths: a ``ray.data.Dataset`` with a ``path`` column (absolute paths the
        workers can read).
      model, backbone: as :func:`jaxmir.load` (a shipped name or a path the actors can read).
      options: patch options and the output name (unnamed: the predictions).
      layout: the columns (``rows.Layout``); by default the command line's
        (:func:`layout_for`). A ``tag`` layout names the model's labels.
      actors: model actors (default: one per GPU, else 1); ``cpus_per_actor``
        CPUs each when there is no GPU.
      batch_size: decoded files per actor call.
      raw: rows keep each file's per-patch values as they are (``patches`` flattened, plus
        their ``shape``) instead of following ``layout`` (the command line's own Ray runs).

    Returns:
      a Dataset of one row per file with the columns and types of
      :func:`jaxmir.collection.outputs.parquet_schema` (``write_parquet`` gives
      the command line's columns and rows, in Ray's part files: a folder the command line
      does not resume); other columns of ``paths`` are not carried (join on ``path``).
    """
    ray = import_ray()
    from ray.data import ActorPoolStrategy

    options = options.for_command("tag")
    if layout is None:
        layout = layout_for(model, backbone, options)
    if layout.command == "tag" and not layout.labels and not raw:
        # its rows would hold no values at all
        raise InputError("a tag layout without the model's labels has no column for its values; "
                         "give Layout('tag', ..., labels=tuple(model.labels)), or no layout "
                         "(ray_engine.layout_for)")
    if not raw:  # a layout of other columns took the values it did not name (zip), silently
        check_fits(layout, layout_for(model, backbone, options), model, options.output)
    try:
        known = paths.schema(fetch_if_missing=False)  # without running what made the Dataset
    except Exception as err:  # noqa: BLE001 -- Arrow's: blocks whose types do not merge
        raise InputError(f"the Dataset's blocks do not agree on their columns' types ({err}); give "
                         "a 'path' column of text, one audio file's path per row") from None
    if known is not None and "path" not in known.names:
        raise InputError(_NO_PATH_COLUMN + ", ".join(known.names))
    size, resources = _pool(ray, actors, cpus_per_actor)
    model, backbone = _for_workers(model), _for_workers(backbone)
    # Without GPUs the actors decode their own files: decoding as tasks beside them waited
    # forever for a CPU where the actors held every one (Ray Data fuses the two steps only
    # when their remote arguments match, and the retries below differ between tasks and actors)
    decodes = "num_gpus" not in resources
    # no retries: a file that kills its decoder (a crash, memory) kills it again, and Ray Data
    # by default restarts actors and retries tasks without end (a run looped, saying nothing)
    with warnings.catch_warnings():  # Ray 2.60 names no parameter for the retries yet
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        decoded = paths if decodes else paths.map(_decode_row, fn_kwargs={"options": options},
                                                  num_cpus=1, max_retries=0)
        return decoded.map_batches(ModelActor, fn_constructor_args=(model, backbone, options,
                                                                    layout, raw, decodes),
                                   batch_size=batch_size, batch_format="numpy",
                                   compute=ActorPoolStrategy(size=size), max_restarts=0,
                                   max_task_retries=0, **resources)


@contextlib.contextmanager
def _held_start(ray):
    """A local cluster's start with stopping signals held (:func:`deferred_interrupts`), Ray's
    own SIGTERM handler kept out: ``ray.init`` sets one that exits at once, leaving the
    processes it has started. (Ray's C++ workers also catch SIGTERM in the last moments of
    the start, before Python can hold it: there, a SIGTERM still aborts.)"""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    ray_sets = getattr(utils, "set_sigterm_handler", None)
    with deferred_interrupts():
        if ray_sets is not None:
            utils.set_sigterm_handler = lambda handler: None
        try:
            yield
        finally:
            if ray_sets is not None:
                utils.set_sigterm_handler = ray_sets


def run(model: str | None, backbone: str | None, sources: Sequence[Source], options: Options,
        layout: Layout, write: Callable[[Result], None], progress: Progress,
        actors: int | None = None) -> None:
    """The command line's Ray run: rows streamed back to the driver and written there (in any
    order)."""
    if not sources:
        return
    ray = connect()
    interrupts.raise_if_received()  # one JAX's callbacks swallowed while Ray's modules loaded
    # jaxmir's own bar and summary say how the run goes: Ray Data's bars and INFO lines would
    # interleave with them, and so would its errors' tracebacks (~30 lines before jaxmir's one
    # for a worker that died; any other error reaches jaxmir's own message below)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    paths = ray.data.from_items([{"path": s.path} for s in sources])
    rows = analyze_dataset(paths, model, options, layout, backbone=backbone, actors=actors,
                           raw=True)
    died = (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError,
            ray.exceptions.OutOfMemoryError)
    try:
        for row in rows.iter_rows():
            error = str(row["error"]) or None
            source = Source(str(row["path"]), int(row["size_bytes"]), int(row["mtime_ns"]))
            values = None if error else np.asarray(row["patches"], np.float32).reshape(row["shape"])
            result = Result(source, float(row["duration_s"]), values, error,
                            warning=str(row["warning"]) or None)
            write(result)
            progress.update(result)
            interrupts.raise_if_received()
    except died:
        raise InputError("a Ray worker died (a crash, or out of memory) while it "
                         "decoded or ran one of the files to do; the rows done are "
                         "kept: run the same command again to resume (--engine local "
                         "--processes names a file that crashes its decoder)") from None
