"""The installed package: one version, the compiled module with its stub and py.typed, a typed
API that `mypy --strict` accepts. Also the runner of cibuildwheel's wheel tests (at the end).

These run against whatever is installed: the editable install of the README's test command,
the wheel that scripts/check_dist.sh builds and installs in a fresh virtual environment, and
each wheel cibuildwheel builds. What the wheel file itself holds, the sdist's build without
the checkout and the install without a compiler are checked by scripts/check_dist.sh.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import michigrad

HERE = Path(__file__).resolve().parent
USER_PROGRAM = HERE / "typing" / "user_program.py"
PACKAGE_DIR = Path(michigrad.__file__).resolve().parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command with this interpreter, without MICHIGRAD_PURE, from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MICHIGRAD_PURE", "MYPYPATH")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def mypy(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run("-m", "mypy", "--strict", "--cache-dir", str(cache), *args, cwd=cwd)


def test_version_comes_from_one_place():
    assert michigrad.__version__ == importlib.metadata.version("michigrad")


def test_the_compiled_engine_is_installed_with_its_stub_and_py_typed():
    from michigrad import _engine

    engine_file = Path(_engine.__file__).resolve()
    assert engine_file.parent == PACKAGE_DIR
    assert engine_file.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), engine_file
    assert (PACKAGE_DIR / "_engine.pyi").is_file()
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_installed_distribution_files():
    dist = importlib.metadata.distribution("michigrad")
    files = [f.as_posix() for f in dist.files or ()]
    direct_url = dist.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        # `pip install -e .` (the README's test command): the distribution is a path entry to
        # the source tree that the tests import from. What a wheel holds is checked on the
        # wheel (scripts/check_dist.sh, cibuildwheel).
        pth = [f for f in dist.files or () if f.name.endswith(".pth")]
        assert pth, files
        entries = {Path(line).resolve() for line in pth[0].read_text().splitlines() if line}
        assert PACKAGE_DIR.parent in entries, (entries, PACKAGE_DIR)
        return
    # Installed from a wheel: its RECORD lists exactly what the wheel held.
    package = [f for f in files if f.startswith("michigrad/")]
    compiled = [f for f in package
                if f.startswith("michigrad/_engine.") and f.endswith((".so", ".pyd"))]
    assert len(compiled) == 1, package
    for needed in ("michigrad/__init__.py", "michigrad/engine.py", "michigrad/_reference.py",
                   "michigrad/_engine.pyi", "michigrad/_engine.pxd", "michigrad/py.typed"):
        assert needed in package, (needed, package)
    leftovers = [f for f in files if f.endswith((".c", ".cpp", ".html", ".o", ".obj"))]
    assert not leftovers, leftovers
    assert not [f for f in files if f.startswith(("tests/", "src/", "build/"))], files


def test_stub_matches_the_compiled_module(tmp_path: Path):
    result = run("-m", "mypy.stubtest", "michigrad._engine", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_typed_user_program_passes_mypy_strict_and_runs(tmp_path: Path, mypy_cache: Path):
    result = mypy(str(USER_PROGRAM), cache=mypy_cache, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = run(str(USER_PROGRAM), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    version, engine, *_ = ran.stdout.split()
    assert (version, engine) == (michigrad.__version__, "compiled")
    assert ran.stderr == ""


def test_types_are_precise_enough_to_catch_mistakes(tmp_path: Path, mypy_cache: Path):
    """The API is typed, not Any: mypy sees a Value's type and rejects misuse."""
    program = tmp_path / "misuse.py"
    program.write_text(textwrap.dedent("""
        from michigrad import Value
        from michigrad._engine import Value as CompiledValue

        v = Value(2.0)
        reveal_type(v * 3)
        reveal_type(CompiledValue(2.0).tanh())
        name: int = v.name
        v.backward(1.0)
        """))
    result = mypy(str(program), cache=mypy_cache, cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'misuse.py:6: note: Revealed type is "michigrad._' in out, out
    assert 'misuse.py:7: note: Revealed type is "michigrad._engine.Value"' in out, out
    assert "misuse.py:8: error: Incompatible types in assignment" in out, out
    assert "misuse.py:9: error: Too many arguments" in out, out
    assert "Found 2 errors" in out, out


# ============================================================ the wheel tests (cibuildwheel)
# cibuildwheel tests each wheel with `python tests/test_packaging.py --without torch --without
# sklearn --without graphviz`: the whole suite except the modules that import one of those.
# - torch and scikit-learn (the cross-check oracles) have no wheels for some of the platforms
#   and Pythons we build for (torch: musllinux, macOS x86_64, CPython 3.9; scikit-learn:
#   musllinux), and building them there is out of the question.
# - graphviz: the drawing tests render with Graphviz's `dot` and open pages in Chromium, system
#   programs the wheel-building containers and runners lack.
# What those modules test is the engine's maths (the same C everywhere) and pure-Python code;
# they run in .ci/run, on the source build and on the built wheel. The modules left out are
# found by reading their imports, so a new test module lands in the right set with no list to
# keep up to date; the runner prints which modules it left out.


def modules_importing(library: str, tests_dir: Path = HERE) -> list[Path]:
    """The test modules in ``tests_dir`` whose code imports ``library`` (anywhere in them)."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name == library or name.startswith(library + ".") for name in names):
                found.append(path)
                break
    return found


def test_the_wheel_tests_leave_out_the_oracle_and_drawing_modules_only():
    left_out = {lib: {p.name for p in modules_importing(lib)}
                for lib in ("torch", "sklearn", "graphviz")}
    assert {"test_ops_against_torch.py", "test_property_dags.py"} <= left_out["torch"]
    assert "test_visualize.py" in left_out["graphviz"]
    # these must run on every wheel: engine API, packaging, micrograd parity, lifetime, errors
    assert not set().union(*left_out.values()) & {
        "test_packaging.py", "test_engine_api.py", "test_micrograd_compat.py",
        "test_lifetime.py", "test_errors.py"}


def main(argv: list[str]) -> int:
    """``python tests/test_packaging.py --without LIBRARY [--without ...] [pytest args]``: run
    the test suite except the modules that import one of the LIBRARYs."""
    libraries, pytest_args = [], list(argv)
    while len(pytest_args) >= 2 and pytest_args[0] == "--without":
        libraries.append(pytest_args[1])
        del pytest_args[:2]
    if not libraries:
        print(main.__doc__, file=sys.stderr)
        return 2
    left_out = sorted({path for library in libraries for path in modules_importing(library)})
    print(f"tests/test_packaging.py: running tests/ without the modules that import "
          f"{' or '.join(libraries)}: {', '.join(p.name for p in left_out) or 'none'}", flush=True)
    return pytest.main([*pytest_args, str(HERE), *(f"--ignore={path}" for path in left_out)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
