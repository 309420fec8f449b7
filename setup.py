"""Builds the compiled core ``michigrad._engine`` with Cython.

MICHIGRAD_DEBUG=1   bounds/wraparound checks on, no optimisation, -g (for valgrind/gdb)
MICHIGRAD_ASAN=1    as DEBUG, plus AddressSanitizer/UBSan instrumentation
MICHIGRAD_TRACE=1   line tracing for coverage
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


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
}
macros = []
compile_args = []
link_args = []
if trace:
    directives.update(linetrace=True, binding=True)
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
if os.name != "nt":
    compile_args += ["-O0", "-g", "-fno-omit-frame-pointer"] if debug else ["-O2"]
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

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
