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
            "print(m.labels[0], sorted(jaxmir.catalog.names()))")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "rock ['msd-musicnn', 'msd-vgg', 'mtt-musicnn', 'mtt-vgg']" in result.stdout
