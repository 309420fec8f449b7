"""Render the README's graph: the loss ``L`` of the course README's example, drawn by show_graph.

    python scripts/make_readme_graph.py [OUT_DIR]     write graph.png and graph.svg, print paths
    python scripts/make_readme_graph.py --check       exit 1 if docs/images/ is out of date

OUT_DIR defaults to docs/images at the repository root; the README shows its ``graph.png``
(``graph.svg`` is the same drawing, kept so that ``--check`` can compare texts, which do not
depend on the fonts installed, unlike the pixels). Needs ``pip install michigrad[viz]``, numpy,
and Graphviz's ``dot`` program. The numbers come from ``np.random.seed(42)``, as in the example,
so rerunning it redraws the same graph.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from michigrad.engine import Value
from michigrad.visualize import show_graph

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "images"


def readme_example() -> Value:
    """The course README's example, as written there (without its prints): returns ``L``."""
    # Definición de los pesos
    np.random.seed(42)
    W0 = Value(np.random.random(), name='W₀')
    W1 = Value(np.random.random(), name='W₁')
    b = Value(np.random.random(), name='b')

    # definición del dataset de entrenamiento
    x0 = Value(.5, name="x₀")
    x1 = Value(1., name="x₁")
    y = Value(2., name="y")

    # forward pass
    yhat = x0*W0 + x1*W1 + b
    yhat.name = "ŷ"

    L = (y - yhat) ** 2
    L.name = "L"

    # backward pass
    L.backward()
    return L


def write(out: Path) -> list[Path]:
    """Draw the example's ``L`` into ``out`` as graph.png and graph.svg."""
    out.mkdir(parents=True, exist_ok=True)
    L = readme_example()
    paths = []
    for fmt in ("png", "svg"):
        # render() would also leave the DOT source beside the image; pipe() writes only the image
        path = out / f"graph.{fmt}"
        path.write_bytes(show_graph(L, rankdir="TB", format=fmt).pipe())
        paths.append(path)
    return paths


def svg_texts(path: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(path).iter("{http://www.w3.org/2000/svg}text")]


def check(committed: Path) -> list[str]:
    """What is wrong with the committed images (nothing: an empty list)."""
    problems = []
    png = committed / "graph.png"
    data = png.read_bytes() if png.is_file() else b""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        problems.append(f"{png} is not a PNG")
    else:
        width, height = struct.unpack(">II", data[16:24])
        if not 0 < width < height:
            problems.append(f"{png} is {width}x{height}: not drawn top to bottom")
    with tempfile.TemporaryDirectory() as tmp:
        _, fresh = write(Path(tmp))
        svg = committed / "graph.svg"
        if not svg.is_file() or svg_texts(svg) != svg_texts(fresh):
            problems.append(f"{svg} differs from what show_graph draws today")
    return problems


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        problems = check(DEFAULT_OUT)
        for problem in problems:
            print(f"make_readme_graph: {problem}", file=sys.stderr)
        if problems:
            print("make_readme_graph: rerun `python scripts/make_readme_graph.py` and commit "
                  "docs/images/", file=sys.stderr)
            return 1
        print(f"make_readme_graph: {DEFAULT_OUT} is up to date")
        return 0
    for path in write(Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
