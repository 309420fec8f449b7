"""Seeing the graph: draw the expression graph behind a ``Value``.

This is the course's ``michigrad.visualize`` (and micrograd's ``draw_dot``), for either engine:

* ``show_graph(root)`` -- a ``graphviz.Digraph`` drawn as in the course: one record per value
  ``{name | data | grad}``, one ellipse per operation, edges input -> operation -> result.
* ``draw_dot(root)`` -- micrograd's drawing (``{data | grad}``, or the lecture's
  ``{label | data | grad}`` when the value has a name).
* ``trace(root)`` -- micrograd's ``(nodes, edges)``: the set of Values reachable from ``root`` and
  the set of ``(child, parent)`` pairs.
* ``show_graph_interactive(root)`` -- an HTML page with a zoomable, draggable graph (vis-network,
  the library pyvis ships), written as one self-contained file that opens without network access.

``root`` is a Value, or a one-element ``MLArray`` (a loss from ``.sum()`` or ``.mean()``): its
element is drawn.

What it does better than the originals:

* **Any depth.** Every traversal uses an explicit stack or queue, never recursion.
* **Deterministic output.** The same graph gives the same DOT text (and the same HTML) on every run,
  in every process, and with either engine. The rule: value nodes are ``v0, v1, ...`` (an op node
  is its value's id plus ``_op``), numbered in a post-order walk from the root that visits each
  value's inputs in the order they were written (``x0*W0`` draws x₀ before W₀), so every value is
  numbered after its inputs, in an order it could have been created in. That order is
  ``Value._children``; ``_prev`` is the same inputs as a set, whose order follows memory
  addresses. micrograd's own Values have only ``_prev``: their inputs are drawn sorted by name,
  op, data and grad, which is deterministic unless two inputs of one op look the same.
* **Any name.** Names with ``| { } < > " \\ &`` or newlines, and non-ASCII names (``W₀``, ``ŷ``),
  are escaped for DOT record labels and drawn as written (DOT collapses runs of spaces).
* **Large graphs do not hang.** ``max_nodes`` (default ``DEFAULT_MAX_NODES``) caps the number of
  values drawn: the values nearest the root are kept, whole levels at a time, a dashed note node
  points at the operations whose inputs were cut, and a ``UserWarning`` says so.
  ``max_nodes=None`` draws everything.
* **Clear errors.** ``rankdir`` other than ``'LR'``/``'TB'`` and unknown ``format`` raise
  ``ValueError``. graphviz and pyvis are optional (``pip install michigrad[viz]``): this module
  imports without them, and only the functions that need one raise ``ImportError`` naming the
  extra. Without the ``dot`` program, ``.source`` works and rendering raises graphviz's own
  ``ExecutableNotFound``.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, cast

if TYPE_CHECKING:  # pragma: no cover - only for type checkers; graphviz stays optional
    import graphviz  # type: ignore[import-untyped, unused-ignore]  # (it ships no types)

__all__ = [
    "DEFAULT_MAX_NODES",
    "draw_dot",
    "show_graph",
    "show_graph_interactive",
    "trace",
]

#: Values drawn at most by default: dot lays out a thousand (two thousand graph nodes with the
#: op nodes) in a second or two, ten times that in minutes to hours; a browser stalls sooner.
DEFAULT_MAX_NODES = 1000

RANKDIRS = ("LR", "TB")

_VIZ_EXTRA = "pip install michigrad[viz]"


class GraphNode(Protocol):
    """What the drawing reads from a node: a michigrad ``Value`` of either engine (its inputs in
    order from ``_children``). micrograd's ``Value`` also fits: ``name``/``label`` are read when
    present, and its inputs come from ``_prev``."""

    data: Any
    grad: Any
    _op: str

    @property
    def _prev(self) -> Iterable[GraphNode]: ...


N = TypeVar("N", bound=GraphNode)
PathLike = Union[str, Path]


# ---------------------------------------------------------------------------- optional imports


def _import_graphviz() -> Any:
    try:
        import graphviz  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise ImportError(
            f"drawing a graph needs the 'graphviz' Python package: {_VIZ_EXTRA} "
            "(and Graphviz's 'dot' program to render it, e.g. apt-get install graphviz)"
        ) from exc
    return graphviz


def _vis_network_assets() -> tuple[str, str]:
    """The vis-network JavaScript and CSS that pyvis ships, newest version first."""
    try:
        import pyvis  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise ImportError(
            f"show_graph_interactive needs the 'pyvis' package: {_VIZ_EXTRA}"
        ) from exc
    # pyvis keeps vis-network in lib/vis-X.Y.Z/ (and a copy under templates/lib/). Its own
    # in_line mode still links Bootstrap from a CDN, so we inline these files ourselves.
    root = Path(pyvis.__file__).parent
    found: dict[tuple[int, ...], tuple[Path, Path]] = {}
    for js in root.glob("**/vis-*/vis-network.min.js"):
        version = tuple(int(p) for p in re.findall(r"\d+", js.parent.name))
        css = js.with_name("vis-network.css")
        if css.is_file():
            found.setdefault(version, (js, css))
    if not found:
        raise ImportError(
            f"pyvis is installed at {root} but ships no vis-network.min.js; "
            f"reinstall it: {_VIZ_EXTRA}"
        )
    js, css = found[max(found)]
    # inlined, the code must not end its own element early ("<\/" means "</" in JS strings)
    script = js.read_text(encoding="utf-8").replace("</script", "<\\/script")
    style = css.read_text(encoding="utf-8").replace("</style", "<\\/style")
    return script, style


# ------------------------------------------------------------------------------ argument checks


def _root_value(root: Any, function: str) -> Any:
    """The Value whose graph is drawn: root itself, or a one-element MLArray's element (a loss
    from ``.sum()`` or ``.mean()``, as ``Graph`` takes it)."""
    from .replay import _one_value  # (recognises an MLArray without importing numpy)

    root = _one_value(root, f"{function}() draws the graph of one Value, not of")
    if not hasattr(root, "_prev") or not hasattr(root, "data"):
        raise TypeError(f"{function}() needs a Value, not {type(root).__name__}")
    return root


def _check_rankdir(rankdir: Any) -> None:
    if not isinstance(rankdir, str) or rankdir not in RANKDIRS:
        raise ValueError(
            f"rankdir must be 'LR' (left to right) or 'TB' (top to bottom), not {rankdir!r}"
        )


def _check_max_nodes(max_nodes: Any) -> None:
    if max_nodes is None:
        return
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int):
        raise TypeError(f"max_nodes must be an int or None, not {type(max_nodes).__name__}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1 (or None for no limit), not {max_nodes}")


def _check_format(graphviz: Any, format: Any) -> None:
    if not isinstance(format, str) or format.lower() not in graphviz.FORMATS:
        examples = ", ".join(repr(f) for f in ("svg", "png", "pdf", "dot"))
        raise ValueError(
            f"format must be an output format Graphviz knows ({examples}, ...; see "
            f"graphviz.FORMATS), not {format!r}"
        )


# ---------------------------------------------------------------------------------- traversal


def _name(v: Any) -> str:
    # michigrad Values have `name` (alias `label`); micrograd's have neither, the lecture's `label`
    name = getattr(v, "name", None)
    if name is None:
        name = getattr(v, "label", "")
    return name if isinstance(name, str) else str(name)


def _inputs(v: Any) -> list[Any]:
    """A value's inputs in drawing order: as written (``_children``) for michigrad's Values."""
    if not hasattr(v, "_children"):  # micrograd's Value has only the set `_prev`: sort it
        return sorted(v._prev, key=lambda c: repr((_name(c), c._op, c.data, c.grad)))
    return list(v._children)


def trace(root: N) -> tuple[set[N], set[tuple[N, N]]]:
    """micrograd's ``trace``: all Values reachable from ``root``, and the ``(child, parent)``
    pairs that link them. Iterative, so any depth works."""
    root = _root_value(root, "trace")
    nodes: set[N] = set()
    edges: set[tuple[N, N]] = set()
    # Values hash by identity in both engines, so the sets behave as micrograd's do.
    stack = [root]
    nodes.add(root)
    while stack:
        v = stack.pop()
        for child in cast("Iterable[N]", v._prev):  # a Value's inputs are Values of its kind
            edges.add((child, v))
            if child not in nodes:
                nodes.add(child)
                stack.append(child)
    return nodes, edges


class _Graph:
    """The part of the graph to draw, numbered deterministically.

    ``values[i]`` is the Value numbered ``i`` (post-order from the root: inputs before results),
    ``inputs[i]`` the numbers of its drawn inputs in drawing order, ``cut[i]`` how many of its
    inputs were left out by ``max_nodes``, ``truncated`` whether anything was.
    """

    def __init__(self, root: Any, max_nodes: int | None) -> None:
        found, kids, cut = _collect(root, max_nodes)
        order = _post_order(kids)
        number = {old: new for new, old in enumerate(order)}
        self.values: list[Any] = [found[old] for old in order]
        self.inputs: list[list[int]] = [[number[c] for c in kids[old]] for old in order]
        self.cut: list[int] = [cut[old] for old in order]
        self.truncated: bool = any(self.cut)

    def __len__(self) -> int:
        return len(self.values)


def _collect(root: Any, max_nodes: int | None) -> tuple[list[Any], list[list[int]], list[int]]:
    """Breadth-first from the root, a whole level (distance from the root) at a time.

    Returns the Values found (root first, then level by level), each one's inputs (as indices
    into that list, in drawing order) and how many of its inputs were cut. A level that would
    take the count past ``max_nodes`` is not drawn at all: no value is drawn without the other
    values at its distance from the root, and nothing below the cut is ever visited, so a huge
    graph costs no more than the part that is drawn.
    """
    found: list[Any] = [root]  # holding the Values keeps their id()s unique while we work
    index = {id(root): 0}
    prevs: list[list[Any]] = []  # found[i]'s inputs in drawing order, read once
    level = [0]
    while level:
        fresh: dict[int, Any] = {}
        for i in level:
            children = _inputs(found[i])
            prevs.append(children)
            for child in children:
                if id(child) not in index and id(child) not in fresh:
                    fresh[id(child)] = child
        if max_nodes is not None and len(found) + len(fresh) > max_nodes:
            break
        level = []
        for key, child in fresh.items():
            index[key] = len(found)
            level.append(len(found))
            found.append(child)
    kids: list[list[int]] = []
    cut: list[int] = []
    for children in prevs:
        kept = [index[id(c)] for c in children if id(c) in index]
        kids.append(kept)
        cut.append(len(children) - len(kept))
    # every kept Value's inputs were read; those not kept (below the cut) are counted as cut
    return found, kids, cut


def _post_order(kids: list[list[int]]) -> list[int]:
    """Nodes in post-order from the root (index 0), each one's inputs visited in list order."""
    order: list[int] = []
    seen = {0}
    stack: list[tuple[int, Iterator[int]]] = [(0, iter(kids[0]))]
    while stack:
        node, it = stack[-1]
        for c in it:
            if c not in seen:
                seen.add(c)
                stack.append((c, iter(kids[c])))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def _warn_truncated(function: str, graph: _Graph, max_nodes: int | None) -> None:
    warnings.warn(
        f"{function}: the graph has more than max_nodes={max_nodes} values; drew the "
        f"{len(graph)} nearest the output (pass max_nodes=None to draw all of it)",
        UserWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------ escaping

_RECORD_SPECIAL = re.compile(r"([{}|<>])")


def _dot_text(s: str) -> str:
    """Plain text for a DOT label: backslashes literal (no ``\\N``, ``\\l`` ...), entities literal
    (DOT decodes ``&amp;``), newlines as line breaks."""
    s = s.replace("\\", "\\\\").replace("&", "&amp;")
    return s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n").replace("\t", " ")


def _quoted(label: str) -> str:
    """A DOT double-quoted string: the label's own backslash escapes pass through to Graphviz."""
    return '"' + label.replace('"', '\\"') + '"'


def _record_text(s: str) -> str:
    """Text for one field of a DOT record label, where ``{ } | < >`` are syntax."""
    return _RECORD_SPECIAL.sub(r"\\\1", _dot_text(s))


# ------------------------------------------------------------------------------------- drawing


def _target(i: int, v: Any) -> str:
    """The node that the inputs of value number ``i`` point at: its op node, if it has an op."""
    return f"v{i}_op" if v._op else f"v{i}"


def _digraph(
    function: str,
    root: Any,
    format: str,
    rankdir: str,
    max_nodes: int | None,
    record: Any,
) -> graphviz.Digraph:
    root = _root_value(root, function)
    _check_rankdir(rankdir)
    _check_max_nodes(max_nodes)
    graphviz = _import_graphviz()
    _check_format(graphviz, format)
    graph = _Graph(root, max_nodes)
    if graph.truncated:
        _warn_truncated(function, graph, max_nodes)

    # The lines are written straight into `body` (graphviz's documented verbatim-source list), in
    # the form Digraph.node()/.edge() write them: calling those for 100,000 nodes takes seconds.
    lines: list[str] = []
    add = lines.append
    for i, v in enumerate(graph.values):
        # a record label is never mistaken for an HTML-like one: it starts with "{"
        add(f"\tv{i} [label={_quoted(record(v))} shape=record]\n")
        # micrograd's rule: a node with an op gets an op node; its inputs point at the op node
        # (or, for a Value with inputs but no op label, at the value itself)
        target = _target(i, v)
        if v._op:
            add(f"\t{target} [label={_quoted(_dot_text(v._op))}]\n")
            add(f"\t{target} -> v{i}\n")
        for c in graph.inputs[i]:
            add(f"\tv{c} -> {target}\n")
    if graph.truncated:
        # one note for the whole cut, pointing at every op whose inputs are not drawn
        note = _quoted(f"inputs not drawn\\n(max_nodes={max_nodes})")
        add(f"\tcut [label={note} shape=note style=dashed]\n")
        for i, v in enumerate(graph.values):
            if graph.cut[i]:
                add(f"\tcut -> {_target(i, v)} [style=dashed]\n")
    return graphviz.Digraph(format=format, graph_attr={"rankdir": rankdir}, body=lines)


def show_graph(
    root: GraphNode,
    format: str = "svg",
    rankdir: str = "LR",
    *,
    max_nodes: int | None = DEFAULT_MAX_NODES,
) -> graphviz.Digraph:
    """Draw the graph that computed ``root``, as the course does.

    Each value is a record ``{name | data %.4f | grad %.4f }``; each operation an ellipse between
    its inputs and its result. ``format`` is any Graphviz output format (``'svg'``, ``'png'``,
    ``'pdf'`` ...), used when the graph is rendered or shown in Jupyter; ``rankdir`` is ``'LR'``
    (left to right) or ``'TB'`` (top to bottom). At most ``max_nodes`` values are drawn (the ones
    nearest ``root``); ``None`` draws all. Returns a ``graphviz.Digraph``: ``.source`` is the DOT
    text, ``.render()``/``.pipe()`` run Graphviz's ``dot``.
    """

    def record(v: Any) -> str:
        return "{%s | data %.4f | grad %.4f }" % (_record_text(_name(v)), v.data, v.grad)

    return _digraph("show_graph", root, format, rankdir, max_nodes, record)


def draw_dot(
    root: GraphNode,
    format: str = "svg",
    rankdir: str = "LR",
    *,
    max_nodes: int | None = DEFAULT_MAX_NODES,
) -> graphviz.Digraph:
    """micrograd's ``draw_dot``: records ``{ data %.4f | grad %.4f }``, or the lecture's
    ``{ label | data %.4f | grad %.4f }`` for a value with a name. Otherwise as ``show_graph``."""

    def record(v: Any) -> str:
        name = _name(v)
        if name:
            return "{ %s | data %.4f | grad %.4f }" % (_record_text(name), v.data, v.grad)
        return "{ data %.4f | grad %.4f }" % (v.data, v.grad)

    return _digraph("draw_dot", root, format, rankdir, max_nodes, record)


# --------------------------------------------------------------------------------- interactive

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{vis_css}</style>
<style>
html, body {{ margin: 0; height: 100%; font-family: sans-serif; }}
#graph {{ position: absolute; inset: 0; }}
#note {{ position: absolute; left: 8px; bottom: 8px; color: #555; font-size: 13px; }}
</style>
<script>{vis_js}</script>
</head>
<body>
<div id="graph"></div>
<div id="note">{note}</div>
<script>
var nodes = new vis.DataSet({nodes});
var edges = new vis.DataSet({edges});
var network = new vis.Network(document.getElementById("graph"),
                              {{nodes: nodes, edges: edges}}, {options});
// fit the whole graph once the canvas has its final size, and again whenever the window resizes
network.once("afterDrawing", function () {{ network.fit(); }});
window.addEventListener("resize", function () {{ network.fit(); }});
</script>
</body>
</html>
"""


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element whatever the names hold (no ``</script>``)."""
    text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def show_graph_interactive(
    root: GraphNode,
    filename: PathLike = "graph.html",
    *,
    rankdir: str = "LR",
    max_nodes: int | None = DEFAULT_MAX_NODES,
) -> Path:
    """Write an interactive page of the graph that computed ``root`` to ``filename``.

    The page draws the same nodes as ``show_graph`` (values as boxes with name, data and grad;
    operations as ellipses) with vis-network, laid out in ranks (``rankdir`` ``'LR'`` or
    ``'TB'``); it can be zoomed and dragged, and hovering a value shows its full-precision numbers.
    The vis-network code is copied into the page from the pyvis package, so it opens from disk
    with no network access. Returns the path written.
    """
    root = _root_value(root, "show_graph_interactive")
    _check_rankdir(rankdir)
    _check_max_nodes(max_nodes)
    vis_js, vis_css = _vis_network_assets()
    graph = _Graph(root, max_nodes)
    if graph.truncated:
        _warn_truncated("show_graph_interactive", graph, max_nodes)

    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i, v in enumerate(graph.values):
        name = _name(v)
        nodes.append({
            "id": f"v{i}",
            "label": "%s\ndata %.4f\ngrad %.4f" % (name, v.data, v.grad),
            "title": f"{name}\ndata = {v.data!r}\ngrad = {v.grad!r}",
            "shape": "box",
            "color": {"background": "#ffffff", "border": "#333333"},
            "font": {"face": "monospace"},
        })
        target = f"v{i}"
        if v._op:
            target = f"v{i}_op"
            nodes.append({"id": target, "label": v._op, "shape": "ellipse",
                          "color": {"background": "#add8e6", "border": "#4682b4"},
                          "font": {"size": 16}})
            edges.append({"from": target, "to": f"v{i}"})
        for c in graph.inputs[i]:
            edges.append({"from": f"v{c}", "to": target})
    options = {
        # ranks like dot's; no physics, so the layout is immediate and the same every time
        "layout": {"hierarchical": {"enabled": True, "direction": "LR" if rankdir == "LR" else "UD",
                                    "sortMethod": "directed", "levelSeparation": 150,
                                    "nodeSpacing": 80}},
        "physics": {"enabled": False},
        "edges": {"arrows": {"to": {"enabled": True}}, "color": {"color": "#555555"},
                  "smooth": {"type": "cubicBezier",
                             "forceDirection": "horizontal" if rankdir == "LR" else "vertical"}},
        "interaction": {"hover": True, "tooltipDelay": 100},
    }
    note = ""
    if graph.truncated:
        note = (f"Showing the {len(graph)} values nearest the output "
                f"(max_nodes={max_nodes}); their inputs beyond are not drawn.")
    title = f"michigrad graph: {_name(root) or 'Value'}"
    page = _PAGE.format(
        title=html.escape(title),
        note=html.escape(note),
        vis_css=vis_css,
        vis_js=vis_js,
        nodes=_script_json(nodes),
        edges=_script_json(edges),
        options=_script_json(options),
    )
    path = Path(filename)
    path.write_text(page, encoding="utf-8")
    return path
