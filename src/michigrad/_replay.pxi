# Graph replay (issue #6): a recorded graph re-executed in C. Included at the end of _engine.pyx.
#
# A `Tape` records, once, the topological order `Value.backward()` uses (`topological_order`):
# the op nodes of the graph, children before parents. Replaying it walks the arena nodes through
# the op table -- `node_forward` forward, the backward sweep backward, in that order -- so every
# value and gradient is the same bits, and the same int/float type, as a fresh build of the
# expression followed by `backward()`. (Where the graph has matmul outputs, forward runs depth by
# depth instead, those outputs side by side on copies of their rows: any order that computes
# children first gives the same values; a forward error is still the topological order's.)
# The tape works on the arena nodes themselves (no copy to sync): the Values a user holds show
# the new data and gradients at once.
#
# Lifetime: the tape holds a reference on the output node (which holds the whole graph) and on
# every bound input and parameter, so no node of the graph can be freed while the tape is open;
# `close()` (or the tape's deallocation) releases them. The replay loops run with the GIL held and
# call no Python code, so no other thread can change the graph while one runs.
#
# Python-defined ops (an OP_PYTHON node, or any node whose `_backward` was set) are refused at
# capture: their forward is unknown. Setting `_backward` on a captured node afterwards is caught
# at the next replay (the engine counts `_backward` assignments, see `py_backward_sets`).

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from libc.math cimport sqrt
from libc.string cimport memcpy, memmove
from libc.stdint cimport uint8_t


cdef str node_description(int32_t i):
    """How errors name a node: its op label and, if it has one, its name."""
    v = handle_of(i)
    label = v._op or "leaf"
    return f"'{label}' node" + (f" {v.name!r}" if v.name else "")


cdef int32_t* copy_indices(list values, Py_ssize_t* count) except? NULL:
    """The arena slots of a list of compiled Values, as a malloc'd array (NULL when empty)."""
    cdef Py_ssize_t n = len(values), k
    count[0] = n
    if n == 0:
        return NULL
    cdef int32_t* out = <int32_t*>malloc(<size_t>n * sizeof(int32_t))
    if out == NULL:
        raise MemoryError()
    for k in range(n):
        out[k] = (<Value>values[k])._i
    return out


cdef int32_t* depth_order(int32_t* order, Py_ssize_t count, Py_ssize_t** ends,
                          Py_ssize_t* ndepths) except? NULL:
    """The op nodes of `order` sorted by depth (the longest path down to a leaf; ties in their
    topological order), as a malloc'd array, and where each depth ends (*ends, malloc'd,
    *ndepths entries). No node reads another of its depth, so the outputs of one matmul come
    side by side (in the topological order a DFS puts each output next to its parent, the node
    that reads it) for run_forward's dots."""
    cdef int32_t* depth = <int32_t*>calloc(<size_t>A.capacity, sizeof(int32_t))  # leaves: 0
    cdef Py_ssize_t* starts = NULL
    cdef int32_t* out = <int32_t*>malloc(<size_t>(count if count > 0 else 1) * sizeof(int32_t))
    cdef Py_ssize_t k, deepest = 0
    cdef int32_t i, j, d
    cdef Node* n
    try:
        if depth == NULL or out == NULL:
            raise MemoryError()
        for k in range(count):
            i = order[k]
            n = &A.nodes[i]
            d = 0
            for j in range(n.nkids):
                d = max(d, depth[kid(n, j)])
            depth[i] = d + 1
            deepest = max(deepest, d + 1)
        starts = <Py_ssize_t*>calloc(<size_t>(deepest + 1), sizeof(Py_ssize_t))
        if starts == NULL:
            raise MemoryError()
        for k in range(count):  # a counting sort, stable: starts[d] begins as depth d's start
            starts[depth[order[k]]] += 1
        for k in range(1, deepest + 1):
            starts[k] += starts[k - 1]
        for k in range(deepest, 0, -1):
            starts[k] = starts[k - 1]
        starts[0] = 0
        for k in range(count):  # ... and ends as its end: depth d's nodes end at starts[d]
            d = depth[order[k]]
            out[starts[d]] = order[k]
            starts[d] += 1
    except BaseException:
        free(out)
        free(starts)
        raise
    finally:
        free(depth)
    memmove(starts, starts + 1, <size_t>deepest * sizeof(Py_ssize_t))  # (depth 0: no node)
    ends[0] = starts
    ndepths[0] = deepest
    return out


cdef enum:
    DOT_GROUP = 8  # dots_of_rows computes this many sums side by side (panels: 16 or 32)


cdef inline bint shared_linear(Node* n) noexcept nogil:
    return n.op == OP_LINEAR and (n.flags & F_SHARED_KIDS) != 0


cdef void dots_of_rows(Node* nodes, int32_t* outs, bint by_w, RowBuffer* rows) noexcept nogil:
    """The values of DOT_GROUP (8) 'linear' nodes that share one row (their w row, [bias,] w,
    when by_w, else their x row) from the copied rows, the sums side by side in registers (each
    alone is a chain of dependent additions): linear_value's float sums, the same operations in
    the same order, so the same bits."""
    cdef Node* first = &nodes[outs[0]]
    cdef int32_t has_bias = first.nkids & 1, m = first.nkids >> 1, k, j
    cdef const double* shared = rows.data + run_block(first, by_w).row
    cdef const double* other[DOT_GROUP]
    cdef double v[DOT_GROUP]
    for j in range(DOT_GROUP):
        other[j] = rows.data + other_block(&nodes[outs[j]], by_w).row
        if has_bias:  # the w row starts with the bias: shared, or one per output
            v[j] = shared[0] if by_w else other[j][0]
            if not by_w:
                other[j] += 1
        else:
            v[j] = 0.0  # Python's sum() starts from the int 0, and 0 + p is 0.0 + p
    if has_bias and by_w:
        shared += 1
    cdef const double* o0 = other[0]
    cdef const double* o1 = other[1]
    cdef const double* o2 = other[2]
    cdef const double* o3 = other[3]
    cdef const double* o4 = other[4]
    cdef const double* o5 = other[5]
    cdef const double* o6 = other[6]
    cdef const double* o7 = other[7]
    cdef double v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3], v4 = v[4], v5 = v[5], v6 = v[6], v7 = v[7]
    cdef double c
    for k in range(m):
        c = shared[k]
        v0 = v0 + c * o0[k]
        v1 = v1 + c * o1[k]
        v2 = v2 + c * o2[k]
        v3 = v3 + c * o3[k]
        v4 = v4 + c * o4[k]
        v5 = v5 + c * o5[k]
        v6 = v6 + c * o6[k]
        v7 = v7 + c * o7[k]
    v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7] = v0, v1, v2, v3, v4, v5, v6, v7
    for j in range(DOT_GROUP):
        nodes[outs[j]].data = v[j]
        nodes[outs[j]].flags &= ~F_DATA_INT


cdef void dot_of_rows(Node* nodes, Node* out, RowBuffer* rows) noexcept nogil:
    """One 'linear' node's value from the copied rows (dots_of_rows for one)."""
    cdef int32_t has_bias = out.nkids & 1, m = out.nkids >> 1, k
    cdef const double* w = rows.data + out.kids.block.row
    cdef const double* x = rows.data + out.aux.block.row
    cdef double v = w[0] if has_bias else 0.0
    w += has_bias
    for k in range(m):
        v = v + w[k] * x[k]
    out.data = v
    out.flags &= ~F_DATA_INT


# A replayed matmul's outputs that share one row read other rows that recur: W1's 64 w rows
# each meet the same two sets of 32 x rows, a dense layer's samples all meet the same w rows. A
# panel is such a set of other rows copied transposed (element k of lane j at k * width + j),
# so that mg_dots sums its outputs side by side in vector lanes; it is kept for the rest of the
# run (the rows' data do not change within one) and made at a set's second sighting, so a graph
# whose sets never recur pays nothing for it.
cdef enum:
    PANEL_SLOTS = 8     # panels kept per run (a new set of rows replaces one round-robin)
    PANEL_WIDTH = 32    # outputs summed side by side at most (mg_dots' widest run)
    PANEL_MIN_M = 32    # shorter rows are summed from the copied rows directly: a panel's
                        # lookup costs more than it saves there (W2's 8 and 16: +2%)
    PANEL_MAX_M = 4096  # and so are longer ones (the panels' memory stays under
                        # PANEL_SLOTS * 32 * 4096 doubles: 8 MB)

ctypedef struct Panel:
    KidBlock* blocks[PANEL_WIDTH]  # the other rows, lane by lane (width of them; none: width 0)
    Py_ssize_t width
    Py_ssize_t skip                # elements skipped at each row's start (a w row's bias)
    Py_ssize_t m                   # elements per lane
    bint made                      # data holds the panel (else the set was only seen once)
    double* data                   # m * width doubles, capacity `capacity`
    Py_ssize_t capacity

ctypedef struct PanelCache:
    Panel slots[PANEL_SLOTS]
    Py_ssize_t next_victim


cdef void clear_panels(PanelCache* cache) noexcept nogil:
    """Forget every panel (a new run: the rows' data may have changed); keep the memory."""
    cdef Py_ssize_t s
    for s in range(PANEL_SLOTS):
        cache.slots[s].width = 0
        cache.slots[s].made = False
    cache.next_victim = 0


cdef void free_panels(PanelCache* cache) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(PANEL_SLOTS):
        free(cache.slots[s].data)
        cache.slots[s].data = NULL
        cache.slots[s].capacity = 0


cdef Panel* panel_for(PanelCache* cache, KidBlock** others, Py_ssize_t width, Py_ssize_t skip,
                      Py_ssize_t m, const RowBuffer* rows) noexcept nogil:
    """The panel of these other rows if it is made (or can be made now, at their second
    sighting); NULL at the first sighting (recorded), or when memory is short."""
    cdef Py_ssize_t s, j, k
    cdef Panel* p
    cdef double* data
    for s in range(PANEL_SLOTS):
        p = &cache.slots[s]
        if p.width != width or p.skip != skip or p.m != m or p.blocks[0] != others[0]:
            continue
        for j in range(1, width):
            if p.blocks[j] != others[j]:
                break
        else:
            if not p.made:  # the second sighting: make it
                if m * width > p.capacity:
                    data = <double*>realloc(p.data, <size_t>(m * width) * sizeof(double))
                    if data == NULL:
                        return NULL
                    p.data = data
                    p.capacity = m * width
                for j in range(width):
                    for k in range(m):
                        p.data[k * width + j] = rows.data[others[j].row + skip + k]
                p.made = True
            return p
    p = &cache.slots[cache.next_victim]  # the first sighting: remember the set
    cache.next_victim = (cache.next_victim + 1) % PANEL_SLOTS
    for j in range(width):
        p.blocks[j] = others[j]
    p.width, p.skip, p.m, p.made = width, skip, m, False
    return NULL


cdef void dots_of_group(Node* nodes, int32_t* outs, Py_ssize_t width, bint by_w, RowBuffer* rows,
                        PanelCache* cache) noexcept nogil:
    """The values of `width` (16 or 32) 'linear' nodes that share one row, of PANEL_MIN_M to
    PANEL_MAX_M products each: on a panel of their other rows where there is one, else
    dots_of_rows 8 at a time. The same bits either way."""
    global panel_outputs
    cdef Node* first = &nodes[outs[0]]
    cdef int32_t has_bias = first.nkids & 1, m = first.nkids >> 1
    cdef KidBlock* others[PANEL_WIDTH]
    cdef double v[PANEL_WIDTH]
    cdef Py_ssize_t j
    for j in range(width):
        others[j] = other_block(&nodes[outs[j]], by_w)
    cdef Panel* panel = panel_for(cache, others, width, 0 if by_w else has_bias, m, rows)
    if panel == NULL:
        for j in range(width // DOT_GROUP):
            dots_of_rows(nodes, outs + j * DOT_GROUP, by_w, rows)
        return
    cdef const double* shared = rows.data + run_block(first, by_w).row
    for j in range(width):  # the sums start from the bias (shared, or each output's own), or 0
        if has_bias:
            v[j] = shared[0] if by_w else rows.data[others[j].row]
        else:
            v[j] = 0.0  # Python's sum() starts from the int 0, and 0 + p is 0.0 + p
    if has_bias and by_w:
        shared += 1
    mg_dots(shared, panel.data, width, v, m, <int>width)
    panel_outputs += width
    for j in range(width):
        nodes[outs[j]].data = v[j]
        nodes[outs[j]].flags &= ~F_DATA_INT


cdef bint forward_linear_run(Node* nodes, int32_t* outs, Py_ssize_t size, RowBuffer* rows,
                             PanelCache* panels) noexcept:
    """Recompute `size` (at most MAX_BATCH) 'linear' nodes over shared rows, none of which reads
    another, on copies of their rows: each row read once, not once per output. False, with
    nothing written, when a row holds an int (a product might be an int: node_forward's
    int-aware path) or memory is short."""
    cdef Py_ssize_t nblocks, b, k, t = 0, group, m
    cdef Py_ssize_t total = place_rows(nodes, outs, size, &nblocks)
    cdef KidBlock* block
    cdef Node* n
    cdef uint16_t flags = 0
    cdef bint by_w
    if not reserve_rows(rows, total, False):
        return False
    for b in range(nblocks):
        block = batch_blocks[b]
        for k in range(block.n):
            n = &nodes[block.kids[k]]
            rows.data[block.row + k] = n.data
            flags |= n.flags
    if flags & F_DATA_INT:
        return False
    clear_panels(panels)
    while t < size:
        # the widest run of outputs from t that share a row: 32 or 16 (on a panel), 8 or 1
        m = nodes[outs[t]].nkids >> 1
        group = PANEL_WIDTH if PANEL_MIN_M <= m <= PANEL_MAX_M else DOT_GROUP
        while group > DOT_GROUP and not (size - t >= group and share_a_row(nodes, outs + t, group, &by_w)):
            group //= 2
        if group > DOT_GROUP:
            dots_of_group(nodes, outs + t, group, by_w, rows, panels)
        else:
            group = dot_group(nodes, outs + t, size - t, &by_w)
            if group == DOT_GROUP:
                dots_of_rows(nodes, outs + t, by_w, rows)
            else:
                dot_of_rows(nodes, &nodes[outs[t]], rows)
        t += group
    return True


cdef inline Py_ssize_t dot_group(Node* nodes, int32_t* outs, Py_ssize_t size, bint* by_w) noexcept nogil:
    """DOT_GROUP when the 'linear' nodes outs[0 : DOT_GROUP] share one row (*by_w: their w row,
    else their x row), else 1."""
    return DOT_GROUP if size >= DOT_GROUP and share_a_row(nodes, outs, DOT_GROUP, by_w) else 1


cdef inline void save_data(Node* nodes, int32_t* order, Py_ssize_t count, SavedData* saved) noexcept nogil:
    """saved[k] <- the data and flags of node order[k], k < count."""
    cdef Py_ssize_t k
    for k in range(count):
        saved[k].data = nodes[order[k]].data
        saved[k].flags = nodes[order[k]].flags


cdef void restore_data(Node* nodes, int32_t* order, Py_ssize_t count, SavedData* saved) noexcept:
    """save_data undone: node order[k] <- saved[k], k < count."""
    cdef Py_ssize_t k
    for k in range(count):
        nodes[order[k]].data = saved[k].data
        nodes[order[k]].flags = saved[k].flags


cdef class Tape:
    """The compiled engine's recorded graph; use it through ``michigrad.Graph``.

    Tape(output, inputs, input_shape, params): ``inputs`` and ``params`` are flat lists of Values
    of this engine (inputs: leaves of the graph, fed in that order by ``feed``). Its fields are
    declared in _engine.pxd."""

    def __cinit__(self):
        self.root = 0
        self.is_open = False

    def __init__(self, Value output not None, list inputs not None, tuple input_shape not None,
                 list params not None):
        cdef int32_t* order = NULL
        cdef bint has_python
        cdef Py_ssize_t k, j, count
        cdef int32_t i, c
        cdef uint32_t epoch
        cdef Py_ssize_t cap
        cdef void* grown
        if self.is_open:
            raise TypeError("Tape.__init__ cannot re-initialise a tape")
        for what, values in (("inputs", inputs), ("params", params)):
            for v in values:
                if not isinstance(v, Value):
                    raise TypeError(f"Graph {what} must be Values of the same engine as the "
                                    f"output, not {type(v).__name__}")
                index_of(<Value>v)
        size = 1
        for extent in input_shape:
            size *= extent
        if size != len(inputs):  # feed reads exactly len(inputs) numbers of this shape
            raise ValueError(f"Tape: input_shape {input_shape} holds {size} numbers, but there "
                             f"are {len(inputs)} inputs")
        self.root = index_of(output)
        count = topological_order(self.root, &order, &has_python)
        try:
            # the visit marks of topological_order say which nodes belong to the graph
            epoch = A.epoch
            for what, values in (("input", inputs), ("parameter", params)):
                seen = set()
                for k, v in enumerate(values):
                    i = (<Value>v)._i
                    if A.nodes[i].nkids or A.nodes[i].op != OP_LEAF:
                        raise ValueError(f"Graph {what} {k} is not a leaf (it is a "
                                         f"{node_description(i)}): only leaves can be fed or "
                                         "trained")
                    if what == "input" and A.nodes[i].mark != epoch:
                        raise ValueError(f"Graph input {k} is not part of the output's graph")
                    if i in seen:
                        raise ValueError(f"Graph {what} {k} appears more than once")
                    seen.add(i)
            for k in range(count):
                i = order[k]
                if A.nodes[i].op == OP_PYTHON or A.nodes[i].flags & F_PY_BACKWARD:
                    raise TypeError(
                        f"Graph cannot replay the Python-defined op of a {node_description(i)}: "
                        "its forward is unknown to the engine (only built-in ops replay); "
                        "build this graph in Python each step instead")
            # the leaves, each once: checked at replay for a _backward set after capture
            self.leaves = <int32_t*>malloc(<size_t>max(count, 1) * 2 * sizeof(int32_t))
            if self.leaves == NULL:
                raise MemoryError()
            epoch = next_epoch()
            self.nleaves = 0
            cap = max(count, 1) * 2
            for k in range(count):
                for j in range(A.nodes[order[k]].nkids):
                    c = kid(&A.nodes[order[k]], <int32_t>j)
                    if A.nodes[c].nkids == 0 and A.nodes[c].mark != epoch:
                        A.nodes[c].mark = epoch
                        if self.nleaves == cap:
                            cap *= 2
                            grown = <int32_t*>realloc(self.leaves, <size_t>cap * sizeof(int32_t))
                            if grown == NULL:
                                raise MemoryError()
                            self.leaves = <int32_t*>grown
                        self.leaves[self.nleaves] = c
                        self.nleaves += 1
            self.inputs = copy_indices(inputs, &self.ninputs)
            self.params = copy_indices(params, &self.nparams)
            for k in range(count):
                if shared_linear(&A.nodes[order[k]]):  # a matmul's outputs: forward runs by depth
                    self.by_depth = depth_order(order, count, &self.depth_ends, &self.ndepths)
                    break
            for k in range(count if self.by_depth != NULL else 0):
                if may_fail(A.nodes[order[k]].op):  # an error must find the old data: room for it
                    self.saved = <SavedData*>malloc(<size_t>count * sizeof(SavedData))
                    if self.saved == NULL:
                        raise MemoryError()
                    break
        except BaseException:
            free(order)
            free(self.leaves)
            free(self.inputs)
            free(self.params)
            free(self.by_depth)
            free(self.depth_ends)
            self.leaves = self.inputs = self.params = self.by_depth = NULL
            self.depth_ends = NULL
            raise
        self.order = order
        self.count = count
        self.input_shape = input_shape
        self.update_groups = []
        self.group_sizes = []
        incref_node(self.root)
        for k in range(self.ninputs):
            incref_node(self.inputs[k])
        for k in range(self.nparams):
            incref_node(self.params[k])
        self.checked_sets = py_backward_sets
        self.stale = False
        self.is_open = True

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        """Drop every reference and buffer (idempotent)."""
        cdef Py_ssize_t k
        if not self.is_open:
            return
        self.is_open = False
        decref_nodes(self.inputs, self.ninputs)
        decref_nodes(self.params, self.nparams)
        decref_node(self.root)
        free(self.order)
        free(self.by_depth)
        free(self.depth_ends)
        free(self.saved)
        free(self.leaves)
        free(self.inputs)
        free(self.params)
        free(self.update)
        self.order = self.by_depth = self.leaves = self.inputs = self.params = self.update = NULL
        self.depth_ends = NULL
        self.saved = NULL
        self.count = self.nleaves = self.ninputs = self.nparams = self.nupdate = 0
        self.update_groups = None

    def close(self):
        """Release the graph (idempotent): its nodes live on only where something else holds
        them. Any later use raises RuntimeError. Refused while one of this tape's own methods
        is running Python code (a number's __float__, the GC, ...): that method still holds
        the buffers close() would free."""
        if self.busy:
            raise RuntimeError("a Graph cannot be closed while one of its own methods is running "
                               "(close() was called from Python code that method called)")
        self.release()

    @property
    def closed(self):
        return not self.is_open

    def __len__(self):
        """The number of op nodes replayed (the output counts only if it is one)."""
        return self.count - (self.count > 0 and A.nodes[self.root].nkids == 0)

    # --- checks -------------------------------------------------------------------------------

    cdef int check(self) except -1:
        """The tape is open, and no captured node got a Python _backward since capture."""
        cdef Py_ssize_t k
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        if py_backward_sets == self.checked_sets:
            return 0
        for k in range(self.count + self.nleaves):
            i = self.order[k] if k < self.count else self.leaves[k - self.count]
            if A.nodes[i].flags & F_PY_BACKWARD:
                raise RuntimeError(
                    f"a {node_description(i)} of this Graph was given a Python _backward after "
                    "capture; the recorded graph no longer describes it (capture it again)")
        self.checked_sets = py_backward_sets
        return 0

    # --- the replay loops ---------------------------------------------------------------------

    cdef int run_forward(self) except -1:
        """Recompute every op node from its children, children first: in the topological
        order, or depth by depth where the graph has matmul outputs, so that those, which no
        node of their depth reads, come side by side and run on copies of their rows (by
        depth, a graph of scalar ops would only lose the topological order's locality). On a
        forward error (log of a negative input, overflow, ...) raise what the Python operator
        raises; the nodes before the failing one hold new values, the rest old ones, so the
        tape is stale."""
        self.check()
        if self.by_depth == NULL:
            self.forward_nodes(self.order, 0, self.count)
        else:
            self.forward_by_depth()
        self.stale = False
        return 0

    cdef int forward_nodes(self, int32_t* order, Py_ssize_t start, Py_ssize_t end) except -1:
        """node_forward for order[start:end]; a forward error marks the tape stale and raises."""
        cdef Node* nodes = A.nodes
        cdef Py_ssize_t k
        cdef int error
        for k in range(start, end):
            error = node_forward(nodes, order[k])
            if error:
                self.stale = True
                raise_node_forward_error(nodes, order[k], error)
        return 0

    cdef int forward_by_depth(self) except -1:
        """run_forward depth by depth: a run of 'linear' nodes over shared rows on copies of the
        rows (forward_linear_run), the other nodes one at a time. A forward error must be the
        one a fresh build raises, with the nodes before it (in the topological order) new and
        the rest old: so where an op can fail, each node's old data is kept as it is replaced,
        and on an error put back before the topological order is walked."""
        cdef Node* nodes = A.nodes
        cdef int32_t* order = self.by_depth
        cdef Py_ssize_t k = 0, j, run, end, d
        cdef RowBuffer rows
        cdef PanelCache panels
        cdef SavedData* saved = self.saved  # saved[k]: node order[k]'s data before this forward
        rows.data = rows.grad = NULL
        rows.capacity = rows.grad_capacity = 0
        memset(&panels, 0, sizeof(PanelCache))
        try:
            for d in range(self.ndepths):
                end = self.depth_ends[d]
                while k < end:
                    run = 0
                    while k + run < end and run < MAX_BATCH and shared_linear(&nodes[order[k + run]]):
                        run += 1
                    if saved != NULL:
                        save_data(nodes, order + k, max(run, 1), saved + k)
                    if run >= DOT_GROUP and forward_linear_run(nodes, order + k, run, &rows, &panels):
                        k += run
                        continue
                    for j in range(k, k + max(run, 1)):
                        if node_forward(nodes, order[j]):  # (only a fallible op: saved is set)
                            restore_data(nodes, order, j, saved)
                            return self.forward_nodes(self.order, 0, self.count)  # raises
                    k += max(run, 1)
        finally:
            free(rows.data)
            free(rows.grad)
            free_panels(&panels)
        return 0

    cdef int run_backward(self) except -1:
        """Zero the op nodes' gradients (a fresh node's int 0), set the output's to 1, and apply
        every local backward in reverse order: a fresh `output.backward()`, bit for bit. Leaf
        gradients accumulate, as in micrograd."""
        cdef Node* nodes = A.nodes
        cdef int32_t* order = self.order
        cdef Node* n
        cdef Py_ssize_t k
        self.check()
        if self.stale:
            raise RuntimeError("this Graph's last forward() failed: its values are stale, so "
                               "backward() would be wrong; run forward() successfully first")
        for k in range(self.count):
            n = &nodes[order[k]]
            if n.nkids:
                n.grad = 0.0
                n.flags |= F_GRAD_INT
        nodes[self.root].grad = 1.0
        nodes[self.root].flags |= F_GRAD_INT
        backward_sweep(nodes, order, self.count)
        return 0

    def forward(self):
        """Recompute the graph from its leaves' current data; returns the output's data."""
        self.run_forward()
        return number_object(A.nodes[self.root].data, A.nodes[self.root].flags & F_DATA_INT)

    def backward(self):
        """Zero the op nodes' gradients and back-propagate from the output (grad 1)."""
        self.run_backward()

    # --- training -----------------------------------------------------------------------------

    def train_step(self, double lr):
        """forward, zero the parameters' gradients, backward, `p.data -= lr * p.grad` for every
        parameter (lr a float: optim.SGD's update then computes the same doubles). Returns the
        output's data from this step's forward."""
        self.run_forward()
        zero_grads(self.params, self.nparams)
        self.run_backward()
        sgd_update(self.params, self.nparams, lr)
        return number_object(A.nodes[self.root].data, A.nodes[self.root].flags & F_DATA_INT)

    def set_update_groups(self, list groups not None):
        """The parameter groups `sgd_step` updates (lists of Values, e.g. an SGD optimiser's).
        Refused while one of this tape's own methods is running Python code: a step still reads
        the groups it would replace."""
        if self.busy:
            raise RuntimeError("a Graph's parameter groups cannot change while one of its own "
                               "methods is running (a step was called from Python code that "
                               "method called)")
        self.busy += 1  # it runs Python code (conversions, dicts, the GC) while holding buffers
        try:
            return self.set_update_groups_body(groups)
        finally:
            self.busy -= 1

    cdef object set_update_groups_body(self, list groups):
        """set_update_groups's work (see set_update_groups); the caller holds the tape busy."""
        cdef Py_ssize_t total = 0, k = 0
        cdef int32_t* update
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        groups = [list(g) for g in groups]
        for g in groups:
            for v in g:
                if not isinstance(v, Value):
                    raise TypeError(f"parameters must be Values of the graph's engine, not "
                                    f"{type(v).__name__}")
                index_of(<Value>v)
            total += len(g)
        update = <int32_t*>malloc(<size_t>max(total, 1) * sizeof(int32_t))
        if update == NULL:
            raise MemoryError()
        for g in groups:
            for v in g:
                update[k] = (<Value>v)._i
                k += 1
        free(self.update)
        self.update = update
        self.nupdate = total
        self.update_groups = groups  # holds the Values, hence their nodes
        self.group_sizes = [len(g) for g in groups]

    def sgd_step(self, list lrs not None):
        """One step of a plain optim.SGD (no momentum, weight decay or maximize) over the groups
        given to `set_update_groups`, with learning rate lrs[g] (floats) for group g: forward,
        zero_grad, backward, `p.data -= lr * p.grad`. Returns the output's data."""
        self.busy += 1  # it runs Python code (conversions, dicts, the GC) while holding buffers
        try:
            return self.sgd_step_body(lrs)
        finally:
            self.busy -= 1

    cdef object sgd_step_body(self, list lrs):
        """sgd_step's work (see sgd_step); the caller holds the tape busy."""
        cdef Py_ssize_t g, start = 0, size
        cdef double* rates
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        if len(lrs) != len(self.group_sizes):
            raise ValueError(f"sgd_step: {len(lrs)} learning rates for "
                             f"{len(self.group_sizes)} parameter groups")
        rates = <double*>malloc(<size_t>max(len(lrs), 1) * sizeof(double))
        if rates == NULL:
            raise MemoryError()
        try:
            for g in range(len(lrs)):
                rates[g] = lrs[g]
            self.run_forward()
            zero_grads(self.update, self.nupdate)
            self.run_backward()
            for g in range(len(lrs)):
                size = self.group_sizes[g]
                sgd_update(self.update + start, size, rates[g])
                start += size
        finally:
            free(rates)
        return number_object(A.nodes[self.root].data, A.nodes[self.root].flags & F_DATA_INT)

    def adam_step(self, list configs not None, dict state not None):
        """One step of optim.Adam/AdamW over the groups given to `set_update_groups`: forward,
        zero_grad, backward, then Adam's update with the very operations of `optim.Adam.step`
        (so the same bits), reading and writing `state` (the optimiser's `state` dict) as it
        does. configs[g] = (lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled),
        floats with eps > 0. Returns the output's data, or None -- before changing anything --
        when a parameter's state is not what Adam itself writes (the caller then runs the
        optimiser in Python)."""
        self.busy += 1  # it runs Python code (conversions, dicts, the GC) while holding buffers
        try:
            return self.adam_step_body(configs, state)
        finally:
            self.busy -= 1

    cdef object adam_step_body(self, list configs, dict state):
        """adam_step's work (see adam_step); the caller holds the tape busy."""
        cdef Py_ssize_t g, k, i = 0, start = 0, size
        cdef double lr, beta1, beta2, eps, wd, w1, x, grad, m, v, vmax, step_size, denom
        cdef bint amsgrad, maximize, decoupled
        cdef double t
        cdef int32_t node
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        if len(configs) != len(self.group_sizes):
            raise ValueError(f"adam_step: {len(configs)} configurations for "
                             f"{len(self.group_sizes)} parameter groups")
        for g in range(len(configs)):
            amsgrad = configs[g][5]
            for k in range(<Py_ssize_t>self.group_sizes[g]):
                st = state.get(i)
                if st is not None and not adam_state_is_plain(st, amsgrad):
                    return None
                i += 1
        self.run_forward()
        zero_grads(self.update, self.nupdate)
        self.run_backward()
        i = 0
        for g in range(len(configs)):
            lr, beta1, beta2, eps, wd, amsgrad, maximize, decoupled = configs[g]
            w1 = 1.0 - beta1
            size = self.group_sizes[g]
            for k in range(size):
                # A.nodes is re-read at each use: the dict operations below may run the GC
                node = self.update[start + k]
                grad = A.nodes[node].grad
                if maximize:  # -p.grad: an int has no negative zero
                    grad = -grad + 0.0 if A.nodes[node].flags & F_GRAD_INT else -grad
                st = state.get(i)
                if st is None:
                    st = {"step": 0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
                    if amsgrad:
                        st["max_exp_avg_sq"] = 0.0
                    state[i] = st
                i += 1
                st["step"] = st["step"] + 1
                t = <double>st["step"]
                x = A.nodes[node].data
                if wd != 0.0:
                    if decoupled:
                        x = x * (1.0 - lr * wd)
                    else:
                        grad = grad + wd * x
                m = st["exp_avg"]
                if fabs(w1) < 0.5:  # torch's lerp, as optim.Adam writes it
                    m = m + w1 * (grad - m)
                else:
                    m = grad - (grad - m) * (1.0 - w1)
                v = <double>st["exp_avg_sq"] * beta2 + (1.0 - beta2) * grad * grad
                st["exp_avg"] = m
                st["exp_avg_sq"] = v
                if amsgrad:
                    vmax = st["max_exp_avg_sq"]
                    if v > vmax:  # Python's max(a, v): a unless v > a
                        vmax = v
                    st["max_exp_avg_sq"] = vmax
                    v = vmax
                step_size = lr / (1.0 - pow(beta1, t))
                denom = sqrt(v) / pow(1.0 - pow(beta2, t), 0.5) + eps
                A.nodes[node].data = x + -step_size * m / denom
                A.nodes[node].flags &= ~F_DATA_INT
            start += size
        return number_object(A.nodes[self.root].data, A.nodes[self.root].flags & F_DATA_INT)

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, batch):
        """Set the bound inputs' data from `batch`: a (nested) list or tuple of numbers, or an
        object with the buffer protocol (a NumPy array), of the inputs' shape, read in C order.
        A C-contiguous float64 array is copied without touching Python objects; other arrays go
        through one `tolist()`. Nothing changes unless the whole batch is valid."""
        cdef double* values
        cdef uint8_t* ints
        cdef Py_ssize_t k, n = self.ninputs
        cdef Node* nodes
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        if n == 0:
            raise ValueError("this Graph has no bound inputs: capture it with Graph(output, "
                             "inputs=...) to feed it")
        values = <double*>malloc(<size_t>n * sizeof(double))
        ints = <uint8_t*>malloc(<size_t>n)
        if values == NULL or ints == NULL:
            free(values)
            free(ints)
            raise MemoryError()
        self.busy += 1  # read_batch runs Python code (__float__, tolist, the GC)
        try:
            read_batch(batch, self.input_shape, n, values, ints)
            nodes = A.nodes
            for k in range(n):
                nodes[self.inputs[k]].data = values[k]
                nodes[self.inputs[k]].flags = ((nodes[self.inputs[k]].flags & ~F_DATA_INT)
                                               | (F_DATA_INT if ints[k] else 0))
        finally:
            self.busy -= 1
            free(values)
            free(ints)

    # --- export -------------------------------------------------------------------------------

    def export(self, list params not None):
        """The tape as plain lists, numbered graph-locally (leaves first, then the op nodes in
        forward order): see michigrad.Graph.export_tape."""
        self.busy += 1  # it runs Python code (conversions, dicts, the GC) while holding buffers
        try:
            return self.export_body(params)
        finally:
            self.busy -= 1

    cdef object export_body(self, list params):
        """export's work (see export); the caller holds the tape busy."""
        cdef Py_ssize_t k, j
        cdef int32_t i
        cdef Node* n
        if not self.is_open:
            raise RuntimeError("this Graph is closed")
        local = {}
        data, is_int = [], []
        for k in range(self.nleaves + self.count):
            i = self.leaves[k] if k < self.nleaves else self.order[k - self.nleaves]
            local[i] = k
            data.append(A.nodes[i].data)
            is_int.append(bool(A.nodes[i].flags & F_DATA_INT))
        ops, aux, kid_start, kids = [], [], [0], []
        for k in range(self.count):
            n = &A.nodes[self.order[k]]
            ops.append(n.op)
            aux.append(0.0 if n.flags & F_SHARED_KIDS else n.aux.c)  # (linear: no constant)
            for j in range(n.nkids):
                kids.append(local[kid(n, <int32_t>j)])
            kid_start.append(len(kids))
        for v in params:
            if not isinstance(v, Value):
                raise TypeError(f"export_tape: parameters must be Values of the graph's engine, "
                                f"not {type(v).__name__}")
        missing = [k for k, v in enumerate(params) if (<Value>v)._i not in local]
        if missing:
            raise ValueError(f"export_tape: parameters {missing[:5]} are not in the graph")
        return {
            "nleaves": self.nleaves, "data": data, "is_int": is_int, "ops": ops, "aux": aux,
            "kid_start": kid_start, "kids": kids, "output": local[self.root],
            "params": [local[(<Value>v)._i] for v in params],
            "inputs": [local[self.inputs[k]] for k in range(self.ninputs)],
            "op_codes": {label or "leaf": code for code, label in OP_LABELS.items() if code != OP_PYTHON} | {"**c": OP_POWC},
        }


cdef void zero_grads(int32_t* params, Py_ssize_t n) noexcept:
    """p.grad = 0 (micrograd's int 0) for each parameter: optim's zero_grad()."""
    cdef Node* nodes = A.nodes
    cdef Py_ssize_t k
    for k in range(n):
        nodes[params[k]].grad = 0.0
        nodes[params[k]].flags |= F_GRAD_INT


cdef void sgd_update(int32_t* params, Py_ssize_t n, double lr) noexcept:
    """`p.data -= lr * p.grad` for a float lr, as Python computes it: int operands convert to
    float exactly (|x| < 2**53), so the result is these two doubles' operations, and a float."""
    cdef Node* nodes = A.nodes
    cdef Node* p
    cdef Py_ssize_t k
    for k in range(n):
        p = &nodes[params[k]]
        p.data = p.data - lr * p.grad
        p.flags &= ~F_DATA_INT


cdef bint adam_state_is_plain(object st, bint amsgrad):
    """Whether an Adam state entry holds what optim.Adam writes (an int step below 2**53, float
    averages, non-negative second moments), so that adam_step computes the same numbers."""
    if type(st) is not dict:
        return False
    step, m, v = st.get("step"), st.get("exp_avg"), st.get("exp_avg_sq")
    if type(step) is not int or not 0 <= step < 9007199254740991:
        return False
    if type(m) is not float or type(v) is not float or not v >= 0.0:
        return False
    if amsgrad:
        vmax = st.get("max_exp_avg_sq")
        return type(vmax) is float and vmax >= 0.0
    return True


cdef int read_batch(object batch, tuple shape, Py_ssize_t n, double* values, uint8_t* ints) except -1:
    """Fill values/ints (n numbers, C order) from a batch of the given shape."""
    cdef Py_buffer view
    cdef Py_ssize_t k
    if isinstance(batch, (list, tuple)) or not shape:
        read_nested(batch, shape, 0, values, ints, 0)
        return 0
    if PyObject_CheckBuffer(batch):
        PyObject_GetBuffer(batch, &view, PyBUF_RECORDS_RO)
        try:
            if (format_is(view.format, b"d")
                    and view.itemsize == sizeof(double) and PyBuffer_IsContiguous(&view, b'C')):
                got = tuple([view.shape[k] for k in range(view.ndim)])
                if got != shape:
                    raise ValueError(f"feed: expected a batch of shape {shape}, got {got}")
                memcpy(values, view.buf, <size_t>n * sizeof(double))
                memset(ints, 0, <size_t>n)
                return 0
        finally:
            PyBuffer_Release(&view)
    if hasattr(batch, "tolist"):  # other arrays: one conversion to nested lists (ints stay ints)
        got = getattr(batch, "shape", None)
        if got is not None and tuple(got) != shape:
            raise ValueError(f"feed: expected a batch of shape {shape}, got {tuple(got)}")
        return read_batch(batch.tolist(), shape, n, values, ints)
    raise TypeError(f"feed: a batch must be a list, a tuple or an array of numbers, not "
                    f"{type(batch).__name__}")


cdef Py_ssize_t read_nested(object obj, tuple shape, Py_ssize_t depth, double* values,
                            uint8_t* ints, Py_ssize_t pos) except -1:
    """Read nested lists/tuples of numbers of exactly `shape` into values[pos:]; returns the
    next position."""
    cdef double x
    cdef bint xi
    if depth == len(shape):
        if isinstance(obj, (list, tuple)):
            raise ValueError(f"feed: the batch is nested deeper than the inputs' shape {shape}")
        if not as_number(obj, &x, &xi):
            raise TypeError(f"feed: batch items must be real numbers, not {type(obj).__name__}")
        values[pos] = x
        ints[pos] = xi
        return pos + 1
    if not isinstance(obj, (list, tuple)):
        raise ValueError(f"feed: expected a batch of shape {shape}, found "
                         f"{type(obj).__name__} where a sequence of {shape[depth]} belongs")
    if len(obj) != shape[depth]:
        raise ValueError(f"feed: expected a batch of shape {shape}, found a sequence of "
                         f"{len(obj)} where one of {shape[depth]} belongs")
    for item in obj:
        pos = read_nested(item, shape, depth + 1, values, ints, pos)
    return pos
