"""`pip install .` ships the weights: the installed package tags offline, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_wheel_carries_the_shipped_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w",
                    str(tmp_path / "wheel")], check=True, timeout=600)
    wheel = next((tmp_path / "wheel").glob("jaxmir-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, timeout=600)
    code = ("import sys, numpy as np, jaxmir; "
            "assert jaxmir.__file__.startswith(sys.argv[1]), jaxmir.__file__; "
            "m = jaxmir.load('msd-musicnn'); "
            "p = m.apply(np.zeros((1, 187, 96), np.float32))['predictions']; "
            "assert p.shape == (1, 50) and 'tensorflow' not in sys.modules; "
            "from importlib.resources import files; "  # type checkers read the package's hints
            "assert files('jaxmir').joinpath('py.typed').is_file(); "
            "print(m.labels[0], sorted(jaxmir.catalog.names()))")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "rock ['msd-musicnn', 'msd-vgg', 'mtt-musicnn', 'mtt-vgg']" in result.stdout


# The lowest versions of the runtime dependencies jaxmir was run with (a fresh venv of each:
# tag, info, the four .pb fixtures, train-head). Lower ones installed and passed `pip check`,
# then failed at run time: jax 0.7 has no jax.enable_x64 (every 44.1-kHz file failed), protobuf
# 3.20-4.23 no message_factory.GetMessageClass (.pb files; 4.22-4.23 crashed) and 4.24's upb
# parser crashed on VGGish's graph, PyAV 12's AudioLayout no nb_channels (every decoded file);
# pyarrow 14-15, soxr 0.3 and matplotlib 3.6 were built for NumPy 1 and failed to import beside
# NumPy 2 (every Parquet output, every file with --resampler soxr, --plot), which jax 0.8 needs.
TESTED_LOWEST = {"jax": (0, 8), "protobuf": (4, 25), "av": (13,), "flax": (0, 10),
                 "numpy": (2, 0), "pyarrow": (16,), "soxr": (0, 4), "matplotlib": (3, 8, 4)}


def test_declared_lower_bounds_are_the_tested_ones():
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # jax 0.8's
    declared = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["plot"]:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        if found:
            declared[found.group(1)] = tuple(int(part) for part in found.group(2).split("."))
    for name, lowest in TESTED_LOWEST.items():
        assert declared.get(name, ()) >= lowest, (name, declared.get(name), lowest)
    assert "optax" in declared  # train-head is a core command: it imports optax


def test_the_version_is_the_project_s():
    """The version is written twice (pyproject.toml, jaxmir.__version__); nothing held them
    equal."""
    import tomllib

    import jaxmir

    assert jaxmir.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "project"]["version"]
