"""Builds the compiled core ``michigrad._engine`` with Cython.

MICHIGRAD_PURE=1    build no extension: a pure-Python wheel (py3-none-any) that runs the reference
                    engine (for machines without a C compiler and without a prebuilt wheel)
MICHIGRAD_DEBUG=1   bounds/wraparound checks on, no optimisation, -g (for valgrind/gdb)
MICHIGRAD_ASAN=1    as DEBUG, plus AddressSanitizer/UBSan instrumentation
MICHIGRAD_TRACE=1   line tracing for coverage

Without MICHIGRAD_PURE=1, a failed compilation (no compiler, no Python headers) stops the
install with a message that says so and names MICHIGRAD_PURE=1: nobody lands on the slow
pure-Python engine by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_COMPILER = """\

michigrad: could not build its compiled engine (the C extension michigrad._engine):
    {error}
Installing michigrad from source needs a C compiler (gcc or clang; on Windows, the Microsoft
C++ Build Tools) and the Python development headers. A prebuilt wheel needs neither: pip builds
from source when no wheel on https://pypi.org/project/michigrad/#files matches this Python and
platform (or when told to, e.g. by --no-binary).

To install the pure-Python engine instead (same API and results, much slower), set
MICHIGRAD_PURE=1 for the install, and at run time to acknowledge it and silence the warning:

    MICHIGRAD_PURE=1 pip install michigrad
"""


class BuildExtOrExplain(build_ext):
    """build_ext that turns a compiler failure into a message naming the way out."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            raise CompileError(NO_COMPILER.format(error=exc)) from exc


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize  # only a compiled build needs Cython

    debug = _flag("MICHIGRAD_DEBUG") or _flag("MICHIGRAD_ASAN")
    trace = _flag("MICHIGRAD_TRACE")
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "infer_types": True,
        "embedsignature": False,  # docstrings equal the reference engine's; signatures via binding
        # No Cython-only names in the module (they are not API, and the stub would have to
        # list them): no doctest dict `__test__`, no pickling helpers `__reduce_cython__` /
        # `__setstate_cython__` (Value pickles through its own __reduce__; NodeExtra never does).
        "autotestdict": False,
        "auto_pickle": False,
    }
    macros = []
    compile_args = []
    link_args = []
    if trace:
        directives.update(linetrace=True, binding=True)
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    if os.name != "nt":
        compile_args += ["-O0", "-g", "-fno-omit-frame-pointer"] if debug else ["-O2"]
        # No fused multiply-adds: Python rounds `a * b + c` twice, and so must the engine to
        # stay bit-identical to micrograd and the reference engine. Where the base ISA has FMA
        # (aarch64: the Linux and macOS arm64 wheels), GCC fuses by default, clang within an
        # expression; x86-64 wheels have no FMA. (MSVC fuses only with /fp:contract.)
        compile_args += ["-ffp-contract=off"]
        if _flag("MICHIGRAD_ASAN"):
            compile_args += ["-fsanitize=address,undefined"]
            link_args += ["-fsanitize=address,undefined"]

    extensions = [
        Extension(
            "michigrad._engine",
            ["src/michigrad/_engine.pyx"],
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
    # cythonize only looks at timestamps: a _engine.c generated with other directives (a
    # DEBUG or TRACE build before a release one, or the other way round) would be reused as
    # is. Regenerate whenever the directives differ from the last generation's.
    stamp = Path("build") / "cython-directives.txt"
    config = repr(sorted(directives.items()))
    force = not stamp.is_file() or stamp.read_text() != config
    extensions = cythonize(extensions, compiler_directives=directives, force=force)
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_text(config)
    return extensions


setup(
    ext_modules=[] if _flag("MICHIGRAD_PURE") else _extensions(),
    cmdclass={"build_ext": BuildExtOrExplain},
)
