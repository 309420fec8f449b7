"""michigrad.visualize: graphs drawn as the course draws them, rendered for real.

The drawings are rendered with Graphviz's ``dot`` (SVG parsed as XML, PNG checked) and the
interactive page is opened in headless Chromium with the network blocked. Nothing here skips:
CI installs the ``viz`` extra, Debian's ``graphviz`` and ``chromium``; a missing one fails a test
with the command that installs it.
"""

from __future__ import annotations

import html.parser
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import graphviz
import pytest

import michigrad.engine
from michigrad import visualize
from michigrad.visualize import draw_dot, show_graph, show_graph_interactive, trace

SVG = "{http://www.w3.org/2000/svg}"

# ------------------------------------------------------------------------------------- helpers


def render_svg(dot: graphviz.Digraph) -> tuple[dict[str, list[str]], set[str]]:
    """Render with `dot` and parse the SVG: {node id: its texts}, {"a->b" edge titles}."""
    root = ET.fromstring(dot.pipe(format="svg"))
    nodes: dict[str, list[str]] = {}
    edges: set[str] = set()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if g.get("class") == "node":
            nodes[title.text] = [t.text or "" for t in g.findall(f"{SVG}text")]
        elif g.get("class") == "edge":
            edges.add(title.text)
    return nodes, edges


def records(nodes: dict[str, list[str]]) -> dict[str, list[str]]:
    """The value nodes (records) of a rendered graph, by id."""
    return {k: v for k, v in nodes.items() if re.fullmatch(r"v\d+", k)}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Decode an 8-bit, non-interlaced PNG (what dot and Chromium write): rows of raw bytes."""
    width, height = png_size(data)
    depth, color, _, _, interlace = data[24:29]
    assert depth == 8 and interlace == 0, (depth, interlace)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                up_left = prev[i - channels] if i >= channels else 0
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows, channels


def count_pixels(rows: list[bytes], channels: int, predicate: Any) -> int:
    n = 0
    for row in rows:
        for x in range(0, len(row), channels):
            if predicate(row[x], row[x + 1], row[x + 2]):
                n += 1
    return n


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to test the interactive page: "
                "apt-get install -y chromium")


def run_chromium(page: Path, tmp_path: Path, *args: str) -> str:
    """Open a file:// page in headless Chromium with every host name unresolvable (no network)."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
         *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class ExternalResources(html.parser.HTMLParser):
    """Collects every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]


def page_data(page: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The nodes and edges embedded in an interactive page."""
    found = re.findall(r"new vis\.DataSet\((.*?)\);\n", page)
    assert len(found) == 2
    return json.loads(found[0]), json.loads(found[1])


def seed_001_graph(Value: type) -> dict[str, Any]:
    """The course notebook's graph (seed 001), built as the notebook builds it."""
    W0 = Value(-.5, name='W₀')
    x0 = Value(.5, name='x₀')
    W1 = Value(-.3, name='W₁')
    x1 = Value(2, name='x₁')
    W0x0 = W0 * x0; W0x0.name = 'W0x0'  # noqa: E702
    W1x1 = W1 * x1; W1x1.name = 'W1x1'  # noqa: E702
    yhat = W0x0 + W1x1; yhat.name = 'ŷ'  # noqa: E702
    yhat = yhat.tanh(); yhat.name = 'tanh(ŷ)'  # noqa: E702
    y = Value(.8, name='y')
    L = y - yhat; L.name = 'L'  # noqa: E702
    return {"W0": W0, "x1": x1, "L": L}


def tricky_graph(Value: type) -> Any:
    """Look-alike inputs everywhere: six equal unnamed leaves, two equal-looking sums that sit
    differently in the graph, a shared product. Nothing but operand order tells them apart."""
    leaves = [Value(1.0) for _ in range(6)]
    shared = leaves[0] * leaves[1]
    a = leaves[2] + leaves[3] + shared
    b = leaves[4] + leaves[5] + shared
    out = (a * b + a).tanh() + b * a
    # p and q look alike from below (same data, two parents each): only what lies above them,
    # p * 2 or q * 3, or the order they were written in, tells which is which inside p + q
    p, q = Value(1.0), Value(1.0)
    out = out + (p + q) * (p * 2.0) * (q * 3.0)
    out.backward()
    return out


# The course README's example (seed 002), word for word.
README_EXAMPLE = '''
import numpy as np
from michigrad.engine import Value
from michigrad.visualize import show_graph

# Definición de los pesos
np.random.seed(42)
W0 = Value(np.random.random(), name='W₀')
W1 = Value(np.random.random(), name='W₁')
b = Value(np.random.random(), name='b')
print(W0)  # imprime Value(data=0.3745401188473625, grad=0, name=W₀)

# definición del dataset de entrenamiento
x0 = Value(.5, name="x₀")
x1 = Value(1., name="x₁")
y = Value(2., name="y")

# forward pass
yhat = x0*W0 + x1*W1 + b
yhat.name = "ŷ"
print(yhat)  # imprime Value(data=1.8699783076450025, grad=0, name=ŷ)

L = (y - yhat) ** 2
L.name = "L"
print(L)  # imprime Value(data=0.016905640482857615, grad=0, name=L)

# backward pass
L.backward()

print(L)  # imprime Value(data=0.016905640482857615, grad=1, name=L)
print(W0)  # imprime Value(data=0.3745401188473625, grad=-0.1300216923549975, name=W₀)

# update de los pesos en la dirección contraria al gradiente de los W

show_graph(L, rankdir="TB",format="png")
'''


def run_readme_example(Value: type, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # the example imports michigrad.engine.Value: point that at the engine under test
    monkeypatch.setattr(michigrad.engine, "Value", Value)
    namespace: dict[str, Any] = {}
    exec(compile(README_EXAMPLE, "README example", "exec"), namespace)
    return namespace


def chain(Value: type, values: int) -> Any:
    """x + 1 + 1 + ...: `values` Values (half of them the constants), as deep as it gets."""
    v = Value(0.0, name="x")
    for _ in range((values - 1) // 2):
        v = v + 1.0
    return v


# ------------------------------------------------------------------------- the course's drawing


def test_show_graph_draws_records_op_nodes_and_edges_as_the_course_does(Value):
    a = Value(2.0, name="a")
    b = Value(-3.0, name="b")
    c = a * b
    c.name = "c"
    d = c + Value(10.0, name="k")
    d.name = "d"
    d.backward()
    dot = show_graph(d)
    assert isinstance(dot, graphviz.Digraph)
    assert dot.format == "svg"
    # the whole DOT text, pinned: inputs in operand order, each value numbered after its inputs
    assert dot.source == textwrap.dedent("""\
        digraph {
        \tgraph [rankdir=LR]
        \tv0 [label="{a | data 2.0000 | grad -3.0000 }" shape=record]
        \tv1 [label="{b | data -3.0000 | grad 2.0000 }" shape=record]
        \tv2 [label="{c | data -6.0000 | grad 1.0000 }" shape=record]
        \tv2_op [label="*"]
        \tv2_op -> v2
        \tv0 -> v2_op
        \tv1 -> v2_op
        \tv3 [label="{k | data 10.0000 | grad 1.0000 }" shape=record]
        \tv4 [label="{d | data 4.0000 | grad 1.0000 }" shape=record]
        \tv4_op [label="+"]
        \tv4_op -> v4
        \tv2 -> v4_op
        \tv3 -> v4_op
        }
        """)
    nodes, edges = render_svg(dot)
    assert records(nodes) == {
        "v0": ["a", "data 2.0000", "grad -3.0000"],
        "v1": ["b", "data -3.0000", "grad 2.0000"],
        "v2": ["c", "data -6.0000", "grad 1.0000"],
        "v3": ["k", "data 10.0000", "grad 1.0000"],
        "v4": ["d", "data 4.0000", "grad 1.0000"],
    }
    assert nodes["v2_op"] == ["*"] and nodes["v4_op"] == ["+"]
    assert edges == {"v2_op->v2", "v0->v2_op", "v1->v2_op", "v4_op->v4", "v2->v4_op", "v3->v4_op"}


def test_the_course_notebook_graph_renders_with_every_name(Value):
    g = seed_001_graph(Value)
    g["L"].backward()
    nodes, edges = render_svg(show_graph(g["L"]))
    values = records(nodes)
    by_name = {texts[0]: texts for texts in values.values() if len(texts) == 3}
    assert {"W₀", "x₀", "W₁", "x₁", "W0x0", "W1x1", "ŷ", "tanh(ŷ)", "y", "L"} <= set(by_name)
    # 12 values (y - ŷ is y + ŷ * -1: the -1 and the product are values too), 6 operations
    assert len(values) == 12
    ops = sorted(texts[0] for node, texts in nodes.items() if node.endswith("_op"))
    assert ops == ["*", "*", "*", "+", "+", "tanh"]
    assert len(edges) == 6 + 11  # op -> result, and one edge per input of each op
    assert by_name["L"] == ["L", "data %.4f" % g["L"].data, "grad 1.0000"]
    assert by_name["W₀"] == ["W₀", "data -0.5000", "grad %.4f" % g["W0"].grad]
    assert by_name["x₁"] == ["x₁", "data 2.0000", "grad %.4f" % g["x1"].grad]


def test_rankdir_tb_draws_a_tall_png_and_lr_a_wide_one(Value):
    L = seed_001_graph(Value)["L"]
    tb, lr = show_graph(L, rankdir="TB", format="png"), show_graph(L)
    assert "rankdir=TB" in tb.source and "rankdir=LR" in lr.source
    width, height = png_size(tb.pipe())
    assert height > width
    width, height = png_size(lr.pipe(format="png"))
    assert width > height


def test_the_rendered_png_shows_the_graph(Value):
    a, b = Value(1.5, name="a"), Value(2.0, name="b")
    width, height, rows, channels = png_pixels(show_graph(a * b, format="png").pipe())
    assert 100 < width < 1000 and 100 < height < 1000
    dark = count_pixels(rows, channels, lambda r, g, b: r + g + b < 150)
    assert dark > 500  # outlines, arrows and text, drawn in black on white


def test_the_course_readme_example_runs_as_written(Value, monkeypatch, capsys):
    namespace = run_readme_example(Value, monkeypatch)
    # every print gives the line its comment promises
    assert capsys.readouterr().out.splitlines() == re.findall(r"# imprime (.*)", README_EXAMPLE)
    # and its last line, show_graph(L, rankdir="TB", format="png"), renders L's graph as a PNG
    dot = namespace["show_graph"](namespace["L"], rankdir="TB", format="png")
    assert dot.format == "png"
    width, height = png_size(dot.pipe())
    assert 300 < width < height < 3000
    nodes, _ = render_svg(dot)
    values = records(nodes)
    assert {"W₀", "W₁", "b", "x₀", "x₁", "y", "ŷ", "L"} <= {t[0] for t in values.values()}
    # numbered as the example reads, `(y - yhat) ** 2` with `yhat = x0*W0 + x1*W1 + b`, and
    # the root last
    assert [values[f"v{i}"][0].strip() for i in range(len(values))] == [
        "y", "x₀", "W₀", "", "x₁", "W₁", "", "", "b", "ŷ", "", "", "", "L"]
    assert values["v13"] == ["L", "data 0.0169", "grad 1.0000"]
    assert values["v2"] == ["W₀", "data 0.3745", "grad -0.1300"]


def test_draw_dot_is_micrograds_drawing_with_the_lectures_label(Value):
    a = Value(2.0)
    b = Value(3.0, label="b")
    out = a * b
    out.backward()
    dot = draw_dot(out)
    assert '[label="{ data 2.0000 | grad 3.0000 }" shape=record]' in dot.source
    assert '[label="{ b | data 3.0000 | grad 2.0000 }" shape=record]' in dot.source
    nodes, edges = render_svg(dot)
    assert sorted(records(nodes).values()) == [
        ["b", "data 3.0000", "grad 2.0000"],
        ["data 2.0000", "grad 3.0000"],
        ["data 6.0000", "grad 1.0000"],
    ]
    assert len(edges) == 3
    assert "rankdir=TB" in draw_dot(out, rankdir="TB").source
    assert png_size(draw_dot(out, format="png").pipe())[0] > 0


def test_micrograds_own_values_can_be_drawn():
    from micrograd.engine import Value as MicrogradValue

    a, b = MicrogradValue(2.0), MicrogradValue(-3.0)
    out = (a * b).relu()
    out.backward()
    nodes, edges = render_svg(draw_dot(out))
    assert sorted(records(nodes).values()) == [
        ["data -3.0000", "grad 0.0000"], ["data -6.0000", "grad 0.0000"],
        ["data 0.0000", "grad 1.0000"], ["data 2.0000", "grad 0.0000"],
    ]
    assert len(edges) == 5
    assert len(records(render_svg(show_graph(out))[0])) == 4


def test_a_value_with_inputs_but_no_op_label_gets_its_inputs_directly(Value):
    a = Value(1.0, name="a")
    out = Value(2.0, (a,), "", name="out")  # a custom op written the micrograd way, unlabeled
    dot = show_graph(out)
    assert "\tv0 -> v1\n" in dot.source and "_op" not in dot.source
    _, edges = render_svg(dot)
    assert edges == {"v0->v1"}


# ------------------------------------------------------------------------------------- trace


def micrograd_trace(root: Any) -> tuple[set[Any], set[tuple[Any, Any]]]:
    """micrograd's trace, recursive, as the course has it."""
    nodes, edges = set(), set()

    def build(v: Any) -> None:
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)

    build(root)
    return nodes, edges


def test_trace_returns_micrograds_nodes_and_edges(Value):
    for root in (seed_001_graph(Value)["L"], tricky_graph(Value), Value(3.0)):
        nodes, edges = trace(root)
        assert (nodes, edges) == micrograd_trace(root)
        assert root in nodes
        assert all(isinstance(n, Value) for n in nodes)
        assert all(child in parent._prev for child, parent in edges)


# ------------------------------------------------------------------------ any depth, any size


def test_a_100000_value_graph_draws_without_recursion_error(Value):
    deep = chain(Value, 100_001)
    nodes, edges = trace(deep)
    assert len(nodes) == 100_001 and len(edges) == 100_000
    source = show_graph(deep, max_nodes=None).source
    assert source.count("shape=record") == 100_001
    assert source.count("->") == 100_000 + 50_000  # input -> op, op -> result
    assert draw_dot(deep, max_nodes=None).source.count("shape=record") == 100_001


def test_a_huge_graph_is_cut_to_max_nodes_with_a_note_and_a_warning(Value):
    deep = chain(Value, 100_001)
    with pytest.warns(UserWarning, match=r"max_nodes=1000.*max_nodes=None"):
        dot = show_graph(deep)
    assert visualize.DEFAULT_MAX_NODES == 1000
    # whole levels of the graph nearest the output: here 1 + 2 + 2 + ... values
    assert dot.source.count("shape=record") == 999
    assert "\tcut [label=" in dot.source
    with pytest.warns(UserWarning):
        small = show_graph(deep, format="png", max_nodes=20)
    nodes, edges = render_svg(small)
    assert len(records(nodes)) <= 20
    assert nodes["cut"] == ["inputs not drawn", "(max_nodes=20)"]
    assert any(edge.startswith("cut->") for edge in edges)
    assert png_size(small.pipe())[0] > 0


def test_max_nodes_keeps_whole_graphs_that_fit_and_the_root_at_least(Value):
    L = seed_001_graph(Value)["L"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert show_graph(L, max_nodes=12).source == show_graph(L, max_nodes=None).source
    with pytest.warns(UserWarning):
        only_root = show_graph(L, max_nodes=1)
    nodes, _ = render_svg(only_root)
    assert list(records(nodes).values()) == [["L", "data %.4f" % L.data, "grad 0.0000"]]
    assert "cut" in nodes


# ------------------------------------------------------------------------------ determinism


DETERMINISM_SCRIPT = """
import importlib, random, sys
random.seed(int(sys.argv[2]))
junk = [[object()] for _ in range(random.randrange(5000))]  # moves every later address
Value = importlib.import_module(sys.argv[1]).Value
sys.path.insert(0, sys.argv[3])
from test_visualize import tricky_graph, seed_001_graph
from michigrad.visualize import show_graph, draw_dot
sys.stdout.write(show_graph(tricky_graph(Value)).source)
sys.stdout.write(draw_dot(seed_001_graph(Value)["L"], rankdir="TB").source)
"""


def test_the_same_graph_gives_the_same_dot_text_in_every_process_and_engine():
    sources = set()
    for module in ("michigrad._engine", "michigrad._reference"):
        for seed in ("1", "2", "3"):
            env = dict(os.environ, PYTHONHASHSEED=seed)
            args = [module, seed, str(Path(__file__).parent)]
            result = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, *args],
                                    capture_output=True, text=True, env=env, timeout=120)
            assert result.returncode == 0, result.stderr
            sources.add(result.stdout)
    assert len(sources) == 1


class ShuffledPrev:
    """A view of a Value, as micrograd's Value looks (``_prev`` only, no ``_children``), whose
    ``_prev`` lists its inputs in a new random order at every call."""

    def __init__(self, v: Any, rng: random.Random, views: dict[int, Any]) -> None:
        self.v, self.rng, self.views = v, rng, views
        self.data, self.grad, self.name, self._op = v.data, v.grad, v.name, v._op

    def view(self, child: Any) -> Any:
        return self.views.setdefault(id(child), type(self)(child, self.rng, self.views))

    @property
    def _prev(self) -> list[Any]:
        kids = [self.view(c) for c in self.v._prev]
        self.rng.shuffle(kids)
        return kids


class ShuffledPrevInOrderChildren(ShuffledPrev):
    """The same view with the Value's ``_children``, in order, as michigrad's Values have."""

    @property
    def _children(self) -> tuple[Any, ...]:
        return tuple(self.view(c) for c in self.v._children)


def test_inputs_are_drawn_in_the_order_they_were_written(Value):
    z, a = Value(2.0, name="z"), Value(3.0, name="a")  # name order is the other way round
    for out, first, second in ((z * a, "z", "a"), (a * z, "a", "z")):
        source = show_graph(out).source
        assert f'\tv0 [label="{{{first} | ' in source
        assert f'\tv1 [label="{{{second} | ' in source
        assert "\tv0 -> v2_op\n\tv1 -> v2_op\n" in source
    # look-alike unnamed inputs too: p * 2 before q * 3 as written, and the other way round
    p, q = Value(1.0), Value(1.0)
    records_in_order = re.compile(r'\tv\d+ \[label="\{ \| data (\S+) ')
    assert records_in_order.findall(show_graph(p * 2 + q * 3).source) == [
        "1.0000", "2.0000", "2.0000", "1.0000", "3.0000", "3.0000", "5.0000"]
    assert records_in_order.findall(show_graph(q * 3 + p * 2).source) == [
        "1.0000", "3.0000", "3.0000", "1.0000", "2.0000", "2.0000", "5.0000"]
    # a shared input is numbered where it is first met: a * b + a is a, b, a * b, the sum
    nodes, edges = render_svg(draw_dot(a * z + a))
    assert [records(nodes)[f"v{i}"][0] for i in range(4)] == ["a", "z", "data 6.0000",
                                                              "data 9.0000"]
    assert edges == {"v0->v2_op", "v1->v2_op", "v2_op->v2", "v2->v3_op", "v0->v3_op",
                     "v3_op->v3"}


def test_the_drawing_follows_children_and_ignores_the_order_of_prev(Value):
    for root in (tricky_graph(Value), seed_001_graph(Value)["L"]):
        expected = show_graph(root).source
        for seed in range(10):
            view = ShuffledPrevInOrderChildren(root, random.Random(seed), {})
            assert show_graph(view).source == expected
            assert draw_dot(view).source == draw_dot(root).source


def test_values_without_children_are_drawn_in_a_fixed_order_whatever_prev_says(Value):
    # micrograd's Values have only the set `_prev`: inputs are sorted by name, op, data, grad,
    # so a graph whose inputs can be told apart that way always gives the same text
    root = seed_001_graph(Value)["L"]
    sources = {show_graph(ShuffledPrev(root, random.Random(seed), {})).source
               for seed in range(10)}
    assert len(sources) == 1
    names = re.findall(r'\tv\d+ \[label="\{([^|]*) \|', sources.pop())
    # L is `y + tanh(ŷ) * -1`: the unnamed product sorts before y, and the unnamed -1 before
    # tanh(ŷ); W₀ before x₀ by name
    assert names == ["", "W₀", "x₀", "W0x0", "W₁", "x₁", "W1x1", "ŷ", "tanh(ŷ)", "", "y", "L"]


def every_op(Value: type) -> Any:
    """One graph with every operation, reflected operand and shared input the engines have."""
    a, b, c = Value(2.0, name="a"), Value(3.0, name="b"), Value(-1.5, name="c")
    outs = [a * b, b * a, a + b, 2 + a, a + 2, 3 * a, a * 3, a - b, 1 - a, a - 1, a / b, 1 / a,
            a / 2, a ** 2, a ** b, 2 ** a, -a, a.exp(), b.log(), c.tanh(), c.relu(),
            c.sigmoid(), c.abs(), a * a, a + a]
    total = outs[0]
    for out in outs[1:]:
        total = total + out
    total.backward()
    return total


def test_both_engines_draw_the_same_text(monkeypatch):
    from conftest import engine_value_class

    compiled, reference = engine_value_class("compiled"), engine_value_class("reference")
    for program in (tricky_graph, every_op, lambda V: seed_001_graph(V)["L"],
                    lambda V: run_readme_example(V, monkeypatch)["L"]):
        assert show_graph(program(compiled)).source == show_graph(program(reference)).source
        assert draw_dot(program(compiled)).source == draw_dot(program(reference)).source


# ---------------------------------------------------------------------------------- escaping

AWKWARD_NAMES = [
    "a|b", "{x}", "<y>", "<<b>html</b>>", 'q"uote', '"', "back\\slash", "end\\", "\\N", "\\l",
    '\\"', "W₀", "ŷ", "tanh(ŷ)", "&amp;", "a & b", "</script>", "x [label=y]", "日本",
]


def test_awkward_names_are_escaped_and_render_as_written(Value):
    # leaves' data end in .5, partial sums in .25 or .75: a leaf is found by its data
    leaves = [Value(i + 0.5, name=name) for i, name in enumerate(AWKWARD_NAMES)]
    lines = Value(100.5, name="two\nlines")
    total = Value(0.25, name="total")
    for leaf in leaves + [lines]:
        total = total + leaf
    for draw in (show_graph, draw_dot):
        nodes, _ = render_svg(draw(total, max_nodes=None))
        by_data = {texts[-2]: texts for texts in records(nodes).values()}
        for i, name in enumerate(AWKWARD_NAMES):
            assert by_data["data %.4f" % (i + 0.5)][0] == name
        assert by_data["data 100.5000"][:2] == ["two", "lines"]


def test_awkward_op_labels_render_as_written(Value):
    a = Value(1.0, name="a")
    ops = ["<lambda>", "\\N|&amp;", 'say "hi"', "∑"]
    outs = [Value(float(i), (a,), op) for i, op in enumerate(ops)]
    total = outs[0]
    for out in outs[1:]:
        total = total + out
    nodes, _ = render_svg(show_graph(total))
    labels = {texts[0] for node, texts in nodes.items() if node.endswith("_op")}
    assert set(ops) <= labels


# ------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("rankdir", ["RL", "BT", "lr", "", None, 1])
def test_a_bad_rankdir_is_a_value_error(Value, rankdir, tmp_path):
    for draw in (show_graph, draw_dot):
        with pytest.raises(ValueError, match="rankdir must be 'LR'.* or 'TB'"):
            draw(Value(1.0), rankdir=rankdir)
    with pytest.raises(ValueError, match="rankdir"):
        show_graph_interactive(Value(1.0), tmp_path / "g.html", rankdir=rankdir)


@pytest.mark.parametrize("format", ["jpgg", "", "SVG ", None, 3])
def test_a_bad_format_is_a_value_error(Value, format):
    for draw in (show_graph, draw_dot):
        with pytest.raises(ValueError, match="format must be an output format Graphviz knows"):
            draw(Value(1.0), format=format)


def test_other_bad_arguments_are_clear_errors(Value, tmp_path):
    with pytest.raises(TypeError, match="show_graph\\(\\) needs a Value, not float"):
        show_graph(1.0)
    with pytest.raises(TypeError, match="trace\\(\\) needs a Value"):
        trace("x")
    with pytest.raises(ValueError, match="max_nodes must be at least 1"):
        show_graph(Value(1.0), max_nodes=0)
    with pytest.raises(TypeError, match="max_nodes must be an int or None"):
        draw_dot(Value(1.0), max_nodes=2.5)
    with pytest.raises(TypeError, match="needs a Value"):
        show_graph_interactive(None, tmp_path / "g.html")


def test_a_one_element_array_draws_its_value_and_a_larger_one_is_refused(MLArray, tmp_path):
    # the README's array example leaves L = (...).sum(), a 0-d MLArray: drawn as its element
    x, w = MLArray([[1.0, -2.0]]), MLArray([[0.5], [0.25]])
    L = (x @ w).tanh().sum()
    assert show_graph(L).source == show_graph(L[()]).source
    assert draw_dot(L).source == draw_dot(L[()]).source
    assert trace(L) == trace(L[()])
    page = show_graph_interactive(L, tmp_path / "g.html")
    assert Path(page).read_text(encoding="utf-8") == Path(
        show_graph_interactive(L[()], tmp_path / "h.html")).read_text(encoding="utf-8")
    for draw in (show_graph, draw_dot, trace):
        with pytest.raises(ValueError, match=r"draws the graph of one Value, not of an MLArray "
                                             r"of shape \(1, 2\) \(reduce it first"):
            draw(x)


# ----------------------------------------------------------------------- optional dependencies


IMPORT_WITHOUT_VIZ = """
import sys
class Block:  # graphviz, pyvis and networkx are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("graphviz", "pyvis", "networkx"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
import michigrad.visualize as viz
from michigrad.engine import Value
a = Value(1.0)
nodes, edges = viz.trace(a * 2)
assert len(nodes) == 3 and len(edges) == 2
for call in (lambda: viz.show_graph(a), lambda: viz.draw_dot(a),
             lambda: viz.show_graph_interactive(a, "never.html")):
    try:
        call()
    except ImportError as exc:
        assert "pip install michigrad[viz]" in str(exc), exc
    else:
        raise AssertionError("no ImportError")
print("ok")
"""


def test_the_module_imports_without_graphviz_pyvis_or_networkx(tmp_path):
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_VIZ], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert not (tmp_path / "never.html").exists()


def test_importing_the_module_imports_no_optional_dependency():
    code = ("import sys, michigrad.visualize; "
            "print(sorted({'graphviz', 'pyvis', 'networkx'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_a_missing_package_names_the_extra_to_install(Value, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # None in sys.modules: ImportError
    with pytest.raises(ImportError, match=re.escape("pip install michigrad[viz]")):
        show_graph(Value(1.0))
    monkeypatch.setitem(sys.modules, "pyvis", None)
    with pytest.raises(ImportError, match=re.escape("pip install michigrad[viz]")):
        show_graph_interactive(Value(1.0), tmp_path / "g.html")


def test_without_the_dot_program_source_works_and_rendering_says_why(Value, monkeypatch,
                                                                      tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere on it
    dot = show_graph(Value(1.0, name="a") + 2)
    assert '"{a | data 1.0000 | grad 0.0000 }"' in dot.source
    with pytest.raises(graphviz.ExecutableNotFound, match="dot"):
        dot.pipe()


# --------------------------------------------------------------------------------- interactive


def test_the_interactive_page_is_self_contained(Value, tmp_path):
    L = seed_001_graph(Value)["L"]
    L.grad = 1.0
    L.name = "</script><script>alert(1)</script>"
    path = show_graph_interactive(L, tmp_path / "graph.html")
    assert path == tmp_path / "graph.html"
    page = path.read_text(encoding="utf-8")
    parser = ExternalResources()
    parser.feed(page)
    assert parser.urls == []  # vis-network's JS and CSS are inline: nothing to fetch
    assert '<meta charset="utf-8">' in page
    assert page.count("</script>") == 2  # the name closed no <script>, nor started one
    assert "</script><script>alert(1)" not in page
    nodes, edges = page_data(page)
    assert len(nodes) == 12 + 6 and len(edges) == 6 + 11
    labels = {n["label"].split("\n")[0] for n in nodes}
    assert {"W₀", "tanh(ŷ)", "</script><script>alert(1)</script>", "tanh", "*", "+"} <= labels
    # the same graph, the same page
    assert show_graph_interactive(L, tmp_path / "again.html").read_text(encoding="utf-8") == page


def test_the_interactive_page_defaults_to_graph_html_and_cuts_huge_graphs(Value, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="max_nodes=1000"):
        path = show_graph_interactive(chain(Value, 100_001), rankdir="TB")
    assert path == Path("graph.html") and path.is_file()
    page = path.read_text(encoding="utf-8")
    nodes, _ = page_data(page)
    assert sum(1 for n in nodes if n["shape"] == "box") == 999
    assert "(max_nodes=1000)" in page and '"direction": "UD"' in page


def test_the_interactive_page_shows_the_graph_in_a_browser_offline(Value, tmp_path):
    L = seed_001_graph(Value)["L"]
    L.backward()
    page = show_graph_interactive(L, tmp_path / "graph.html")

    # Ask the page itself what vis-network built: a copy reports it in its title
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", """<script>
setTimeout(function () {
  document.title = "nodes=" + network.body.data.nodes.length +
    " edges=" + network.body.data.edges.length +
    " placed=" + Object.keys(network.getPositions()).length;
}, 500);
</script></body>"""), encoding="utf-8")
    dom = run_chromium(probe, tmp_path, "--dump-dom")
    assert "<title>nodes=18 edges=17 placed=18</title>" in dom
    assert "<canvas" in dom

    # and what a person sees: boxes, light blue op nodes, text and arrows
    shot = tmp_path / "shot.png"
    run_chromium(page, tmp_path, "--window-size=800,600", f"--screenshot={shot}")
    width, height, rows, channels = png_pixels(shot.read_bytes())
    assert (width, height) == (800, 600)
    op_blue = count_pixels(rows, channels, lambda r, g, b: (r, g, b) == (0xAD, 0xD8, 0xE6))
    dark = count_pixels(rows, channels, lambda r, g, b: r + g + b < 300)
    assert op_blue > 200, "no op nodes drawn"
    assert dark > 500, "no text or edges drawn"
