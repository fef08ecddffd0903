"""Which rows of an existing output a resumed run keeps, and which files it still has to do.

A row is kept when its file succeeded and is unchanged (same path, size and
modification time), when its file is not part of this run (another run's
rows are not ours to drop: but the failed row of a folder that can be listed
now, which its files' rows replace), or when its file cannot be read now (a
folder renamed, a drive not mounted): it has not changed that anyone can tell,
and the run skips it, saying so. Failed rows and rows of files changed since are
dropped; those files are done again and their new rows appended. A strict run
(``--strict``) drops the rows of damaged files too.
"""

from __future__ import annotations

import os
import warnings
from typing import Collection, Iterable, Mapping

from jaxmir.collection.inputs import Source, file_key
from jaxmir.collection.rows import (ANOTHER_OUTPUT, DONE, ERROR, OK, OVERWRITE,
                                    SETTINGS_BEFORE_RECORDED, UNRECORDED_DEFAULTS, as_text,
                                    model_by_path, same_model_name)
from jaxmir.errors import InputError, JaxmirWarning


def keep(path: str, size: int, mtime_ns: int, status: str, current: Mapping[str, Source],
         strict: bool = False) -> bool:
    """Whether an existing row stays in the output (see the module docstring); ``strict``: a
    damaged file's row goes too (a strict run fails such a file)."""
    source = current.get(path)
    if source is None:  # another run's, but the error of a folder that can be listed now
        return not (status == ERROR and _listable_folder(path))
    if not source.reachable:
        return status in DONE
    done = (OK,) if strict else DONE
    return status in done and (size, mtime_ns) == (source.size, source.mtime_ns)


def _listable_folder(path: str) -> bool:
    """Whether ``path`` is a folder that can be listed: a failed row of it (it was gone, or could
    not be listed) is stale, and its files are rows of their own."""
    try:
        with os.scandir(path):
            return True
    except (OSError, ValueError):
        return False


def gone_from_folders(paths: Iterable[str], folders: Iterable[str],
                      current: Mapping[str, Source]) -> list[str]:
    """The ``paths`` of rows kept (done or failed) that lie below one of ``folders`` but
    are no file of this run and no longer exist: their rows are kept (another run's rows are not
    ours to drop), and said."""
    roots = tuple(os.path.join(folder, "") for folder in folders)
    return sorted(path for path in set(paths) if path not in current and roots
                  and path.startswith(roots) and not os.path.lexists(path))


def to_do(sources: Iterable[Source], done: set[tuple[str, int, int]]) -> list[Source]:
    """The sources whose ``(path, size, mtime_ns)`` has no kept row, in order, but those that
    cannot be read now and have one (:func:`unreachable_done`)."""
    skipped = set(unreachable_done(sources, done))
    return [s for s in sources if s.key not in done and s not in skipped]


def unreachable_done(sources: Iterable[Source], done: set[tuple[str, int, int]]) -> list[Source]:
    """The sources that cannot be read now (:attr:`Source.reachable`) whose path has a row done
    in an earlier run: kept, not retried."""
    paths = {path for path, _, _ in done}
    return [s for s in sources if not s.reachable and s.path in paths]


def real_paths(stored: Iterable[str], current: Mapping[str, Source]) -> list[str]:
    """Paths as a table stored them (:func:`jaxmir.collection.rows.as_text`), as the current
    sources spell them: by their text, or else as another name of the same file (a link a run
    before was given, where this one has the name without links); a path of no current source
    stays as it is."""
    spelled = {as_text(path): path for path in current}
    by_file: dict | None = None  # only where a stored path is not spelled as now
    named = []
    for path in stored:
        if path not in spelled:
            if by_file is None:
                by_file = {file_key(p): p for p in current}
            spelled[path] = by_file.get(file_key(path), path)
        named.append(spelled[path])
    return named


def _labels_differ(there, now) -> str:
    """How two runs' label lists differ, at the first place they do."""
    if not isinstance(there, list) or not isinstance(now, list):
        return "the labels differ"
    for i, (a, b) in enumerate(zip(there, now)):
        if a != b:
            return f"the labels differ: label {i + 1} is {a!r} there, {b!r} now"
    more, where = (there, "there") if len(there) > len(now) else (now, "now")
    first = more[min(len(there), len(now))]
    return f"the labels differ: {len(there)} there, {len(now)} now, from {first!r} on only {where}"


def check_identity(output: str, found: dict, expected: dict,
                   same_outputs: Collection[str] = (), recorded: bool = True) -> None:
    """Refuse to append to an output written with another model or other settings (a field
    one side does not record counts as its :data:`~jaxmir.collection.rows.UNRECORDED_DEFAULTS`
    value; ``same_outputs``: names of one output, any of which matches another,
    :func:`~jaxmir.collection.rows.same_outputs`; ``recorded``: ``False`` for an output written
    before jaxmir recorded settings, taken to hold the defaults', with a warning)."""
    def value(fields: dict, key: str):
        return fields.get(key, UNRECORDED_DEFAULTS.get(key))

    if found.get("output") in same_outputs and expected.get("output") in same_outputs:
        found = {**found, "output": expected["output"]}
    if isinstance(found.get("model"), str) and isinstance(expected.get("model"), str) \
            and same_model_name(found["model"], expected["model"]):
        found = {**found, "model": expected["model"]}
    if "model_sha256" not in found and "model_sha256" in expected \
            and model_by_path(found.get("model"), expected["model"]):
        # written before outputs recorded a model file's name and bytes: its path then
        found = {**found, "model": expected["model"], "model_sha256": expected["model_sha256"]}
    if "average" in found and "average" not in expected:  # a table's, recorded before
        found = {k: v for k, v in found.items() if k != "average"}  # its column was the mean

    keys = sorted(k for k in set(found) | set(expected) if value(found, k) != value(expected, k))
    if not keys:
        if not recorded:
            warnings.warn(f"{output} records no settings (written before jaxmir recorded them): "
                          "taken to hold the defaults' (--patch-hop 93, --last-patch discard, "
                          "--resampler essentia); if it was written with others, this run's "
                          "rows join rows unlike them", JaxmirWarning, stacklevel=2)
        return
    def as_found(key: str) -> str:
        if key == "output_node" and key not in found:
            return "the graph's own there (or not recorded: written before jaxmir recorded it)"
        if not recorded and key in SETTINGS_BEFORE_RECORDED:
            return f"not recorded there (written before jaxmir recorded settings: taken as the " \
                   f"default, {value(found, key)!r})"
        return f"{value(found, key)!r} there"

    details = "; ".join(f"{k}: {as_found(k)}, {value(expected, k)!r} now" for k in keys
                        if k not in ("labels", "model_sha256"))
    if "model_sha256" in keys:
        there, now = value(found, "model_sha256"), value(expected, "model_sha256")
        bytes_ = f"the model files' bytes differ (sha256 {there!r} there)" if there and now else \
            "a model file there, a shipped model now" if there else \
            "a model file by its path there, its bytes not recorded" \
            if model_by_path(found.get("model"), None) else \
            "a shipped model there, a model file now" if isinstance(found.get("model"), str) \
            else f"no model name there ({found.get('model')!r}), a model file now"
        details = "; ".join(filter(None, [details, bytes_]))
    if "labels" in keys:
        details = "; ".join(filter(None, [details, _labels_differ(found.get("labels"),
                                                                  expected.get("labels"))]))
    there, now = found.get("model"), expected.get("model")
    # the same name, other weights or labels (a tag table's labels, where embed writes none, are
    # another command's, not another model's)
    other_model = "model_sha256" in keys or ("labels" in keys and "command" not in keys)
    whose = f"of model {there!r}, not of {now!r} with these settings" if there != now else \
        f"of another {now!r}" if other_model else f"of {now!r} with other settings"
    raise InputError(f"{output} holds results {whose} ({details}); {ANOTHER_OUTPUT}, or "
                     f"{OVERWRITE} to start it over")
