"""Installing without a C compiler still gives a working udpnest, on the Python engine, and says so.

The package is built from a copy of this checkout (without the in-place built extension) with
``CC=false`` (no usable compiler) and installed with ``pip install --no-build-isolation --no-deps
--target`` (no network: the build backend and numpy/pyroute2 come from the test's own venv).  Then:
``udpnest`` imports from the target, its engine is "python", ``--engine native`` is refused with the
cause named, and the endpoint answers the status command's "engine" key (checked without root through
``Endpoint.status``' construction path: ``Endpoint`` itself refuses the native engine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _copy_tree(dst: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "csrc", dst / "csrc")
    shutil.copytree(ROOT / "src", dst / "src",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build"))


@pytest.fixture(scope="module")
def no_compiler_install(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    target = tmp_path_factory.mktemp("target")
    _copy_tree(src)
    env = dict(os.environ, CC="false", LDSHARED="false", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps",
                        "--no-compile", "--target", str(target), str(src)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return target, r.stdout + r.stderr


def _run(target: Path, code: str, **env) -> subprocess.CompletedProcess:
    # the target first on sys.path: the editable install of this checkout (a .pth entry) comes later
    e = dict(os.environ, PYTHONPATH=str(target), **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=60,
                          cwd=str(target))


def test_install_without_compiler_warns_loudly(no_compiler_install):
    target, log = no_compiler_install
    assert "native core (udpnest._native) was NOT built" in log
    assert not list(target.glob("udpnest/_native*.so"))


def test_installed_package_runs_the_python_engine(no_compiler_install):
    target, _ = no_compiler_install
    r = _run(target, "import udpnest, udpnest.engine as e; print(udpnest.__file__); print(e.default_engine());"
                     "print(e.NATIVE_ERROR is not None)")
    assert r.returncode == 0, r.stderr
    path, eng, why = r.stdout.split()
    assert path.startswith(str(target)) and eng == "python" and why == "True"


def test_native_engine_is_refused_with_the_cause(no_compiler_install):
    target, _ = no_compiler_install
    code = ("from udpnest.config import build_config\nfrom udpnest.endpoint import Endpoint\n"
            "from udpnest.engine import EngineError\n"
            "cfg = build_config({'id': 7, 'local': '198.51.100.1', 'remote': ['198.51.100.2'], 'engine': 'native'})\n"
            "try:\n    Endpoint(cfg)\nexcept EngineError as e:\n    print('REFUSED', e)\n"
            "cfg = build_config({'id': 7, 'local': '198.51.100.1', 'remote': ['198.51.100.2']})\n"
            "print('DEFAULT', Endpoint(cfg).engine)\n")
    r = _run(target, code)
    assert r.returncode == 0, r.stderr
    assert "REFUSED engine: native core not available" in r.stdout
    assert "No module named" in r.stdout or "_native" in r.stdout
    assert "DEFAULT python" in r.stdout


def test_cli_up_refuses_native_without_compiler(no_compiler_install):
    target, _ = no_compiler_install
    r = subprocess.run([sys.executable, "-m", "udpnest.cli", "up", "--id", "7", "--local", "198.51.100.1",
                        "--remote", "198.51.100.2", "--engine", "native"],
                       env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True, timeout=60,
                       cwd=str(target))
    assert r.returncode == 2
    assert "native core not available" in r.stderr and "--engine python" in r.stderr


def test_purepython_env_disables_the_built_core():
    """UDPNEST_PUREPYTHON=1 at run time: the built core is ignored and native is refused."""
    r = subprocess.run([sys.executable, "-c", "import udpnest.engine as e; print(e.default_engine());"
                        "e.check('native')"], env=dict(os.environ, UDPNEST_PUREPYTHON="1"),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split()[0] == "python"
    assert "UDPNEST_PUREPYTHON is set" in r.stderr
