"""The command-line options of collection runs, and when ``jaxmir tag`` is one: ``argparse`` only,
so that building the parser loads neither JAX nor pyarrow."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxmir.arguments import whole_number
from jaxmir.batches import BATCH, HEAVY_HEAD_BATCH, MAX_BATCH


def add_collection_options(parser: argparse.ArgumentParser, reports: bool = False) -> None:
    """``--jobs``, ``--processes``, ``--engine``, ``--actors``, ``--batch``, ``--per-patch``,
    ``--overwrite``, ``--flush-every``; ``reports``: the command also writes reports and
    pictures (``jaxmir tag``), which ``--overwrite`` replaces."""
    group = parser.add_argument_group(
        "collections", "with --output OUT.parquet, OUT.jsonl, OUT.csv (tag) or a folder of .npy "
                       "(embed): one row per file, written as files are done; a rerun resumes")
    group.add_argument("-j", "--jobs", metavar="N", type=whole_number(0), default=None,
                       help="decoding workers (default: one per core, at most one per file, none "
                            "for one file; 0 = decode in the main thread, file by file as it "
                            "streams)")
    group.add_argument("--processes", action="store_true",
                       help="decode in worker processes instead of threads: a decoder that "
                            "crashes on a file then ends the run naming it, at ~600 MB per worker")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local (default) or ray: the Ray cluster at $RAY_ADDRESS (a local one "
                            "when unset); needs pip install 'jaxmir[ray]'")
    group.add_argument("--actors", metavar="N", type=whole_number(1), default=None,
                       help="--engine ray: model actors (default: one per GPU, else 1)")
    group.add_argument("--batch", metavar="N", type=whole_number(1, MAX_BATCH), default=None,
                       help=f"patches per model call (default {BATCH}, {HEAVY_HEAD_BATCH} for "
                            "a model with large dense layers such as VGGish); larger calls keep "
                            "a GPU busy, the outputs change only by float32 rounding (~1e-7)")
    group.add_argument("--per-patch", action="store_true",
                       help="also write every patch's output (column 'patches', [n_patches, dim])")
    group.add_argument("--overwrite", action="store_true",
                       help="start a table or folder --output over instead of resuming it"
                            + ("; replace an existing report or --plot picture"
                               if reports else ""))
    group.add_argument("--flush-every", metavar="ROWS", type=whole_number(1), default=256,
                       help="Parquet: rows per part file (default 256; a part is also written "
                            "every minute)")


def is_collection(args: argparse.Namespace, command: str) -> bool:
    """Whether ``jaxmir tag``/``embed`` runs as a collection (rows to a resumable output).

    ``embed`` always does; ``tag`` when ``--output`` ends in .parquet or
    .jsonl, or in .csv without ``--format csv`` (which keeps the ranked
    file,rank,label,score table).
    """
    if command == "embed":
        return True
    output = getattr(args, "output", None)
    if not output:
        return False
    suffix = Path(output).suffix.lower()
    return suffix in (".parquet", ".jsonl") or (suffix == ".csv" and args.format != "csv")
