"""Seeded fuzzing of the `.pb` reader: damaged real graphs load or raise a jaxmir error, nothing
else.

Mutations of the fixture graphs (bit flips, truncation, inserted bytes, and
edits of parsed fields: ops, inputs, ports, attributes, tensor shapes and
dtypes) and the crafted hostile graphs all load in worker processes under a
memory cap and a per-load timeout (``load_guarded``). The only outcomes
allowed are a successful load or a :class:`jaxmir.errors.JaxmirError`; run
with ``-s`` to see the counts. ``JAXMIR_FUZZ_CASES`` sets the number of
mutations per fixture (default sized for about a minute in CI).
"""

from __future__ import annotations

import collections
import os
import random

import numpy as np

from conftest import shared_fixture
from jaxmir.tfgraph.graphdef import GraphDefProto
from test_hostile_graphs import CRAFTED, load_guarded

FIXTURES = ("genre_dortmund_musicnn_msd.pb", "vgg4.pb", "small_vggish_init.pb",
            "emomusic-msd-musicnn-1.pb")
CASES = int(os.environ.get("JAXMIR_FUZZ_CASES", "400"))
SEED = 12
OPS = ("Identity", "MatMul", "Conv2D", "BiasAdd", "Relu", "Add", "Mul", "MaxPool", "Reshape",
       "FusedBatchNorm", "Merge", "Switch", "Const", "Placeholder", "Squeeze", "Softmax",
       "PartitionedCall", "ConcatV2", "Pad", "Rsqrt", "NoOp")


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 8))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))) + data[at:]


def edit_fields(data: bytes, rng: random.Random) -> bytes:
    """Parse, change one field of one node the way a corrupt or hostile writer could,
    re-serialise."""
    g = GraphDefProto()
    g.ParseFromString(data)
    nodes = list(g.node)
    node = rng.choice(nodes)
    kind = rng.randrange(9)
    if kind == 0:
        node.op = rng.choice(OPS)
    elif kind == 1 and len(node.input):
        del node.input[rng.randrange(len(node.input))]
    elif kind == 2:
        node.input.append(f"{rng.choice(nodes).name}:{rng.choice((0, 1, 2, 7, -1))}")
    elif kind == 3 and len(node.input):
        node.input[rng.randrange(len(node.input))] = rng.choice(nodes).name  # rewire, maybe a cycle
    elif kind == 4:
        node.name = rng.choice(nodes).name  # a duplicate
    elif kind == 5 and node.attr:
        value = node.attr[rng.choice(sorted(node.attr))]
        if value.WhichOneof("value") == "list" and len(value.list.i):
            value.list.i[rng.randrange(len(value.list.i))] = rng.choice((0, -1, 3, 132, 1 << 40))
        elif value.WhichOneof("value") == "f":
            value.s = b"0.001"
        elif value.WhichOneof("value") == "type":
            value.type = rng.choice((3, 7, 9, 101, 999))
        else:
            value.i = rng.choice((0, -5, 1 << 62))
    elif kind == 6 and "value" in node.attr:
        tensor = node.attr["value"].tensor
        if len(tensor.tensor_shape.dim):
            dim = tensor.tensor_shape.dim[rng.randrange(len(tensor.tensor_shape.dim))]
            dim.size = rng.choice((0, 1, dim.size + 1, -1, 1 << 40))
        else:
            tensor.tensor_shape.dim.add(size=rng.choice((0, 3, 1 << 30)))
    elif kind == 7 and "value" in node.attr:
        node.attr["value"].tensor.dtype = rng.choice((1, 2, 3, 9, 10, 19, 7, 101))
    elif kind == 8 and "shape" in node.attr:
        shape = node.attr["shape"].shape
        shape.dim.add(size=rng.choice((1, -1, 0)))
    else:
        del g.node[rng.randrange(len(g.node))]
    return g.SerializeToString()


MUTATIONS = (bit_flips, truncate, insert_bytes, edit_fields)


def test_mutated_and_crafted_graphs_load_or_raise_jaxmir_errors(tmp_path):
    rng = random.Random(SEED)
    paths, kinds = [], {}
    for fixture in FIXTURES:
        data = shared_fixture(f"essentia-models/{fixture}").read_bytes()
        for i in range(CASES):
            mutate = MUTATIONS[i % len(MUTATIONS)]
            path = tmp_path / f"{fixture[:-3]}-{i}-{mutate.__name__}.pb"
            path.write_bytes(mutate(data, rng))
            paths.append(path)
            kinds[str(path)] = mutate.__name__
    for name, build in CRAFTED.items():
        path = tmp_path / f"crafted-{name}.pb"
        path.write_bytes(build().SerializeToString())
        paths.append(path)
        kinds[str(path)] = "crafted"

    outcomes = load_guarded(paths, cap_mb=2560, timeout_s=60)

    counts = collections.Counter()
    for path, outcome in outcomes.items():
        verdict = outcome.split(":")[0]
        counts[(kinds[path], verdict)] += 1
    print(f"\nfuzz outcomes over {len(paths)} graphs (seed {SEED}, {CASES} per fixture):")
    for (kind, verdict), n in sorted(counts.items()):
        print(f"  {kind:14s} {verdict:40s} {n}")
    bad = {p: o for p, o in outcomes.items() if not (o == "loaded" or o.startswith("jaxmir "))}
    assert not bad, "\n".join(f"{os.path.basename(p)}: {o}" for p, o in bad.items())
    assert len(outcomes) == len(paths)
    # The fuzzer must reach the converter, not only the parser: some mutants still load.
    assert counts[("bit_flips", "loaded")] + counts[("edit_fields", "loaded")] > 0
    assert np.all([p.exists() for p in paths])
