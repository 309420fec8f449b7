# The array kernels of issue #5 (`michigrad.MLArray`), included at the end of _engine.pyx.
#
# An array is a NodeStore (one node reference per slot, an arena index: no Python object per
# element) and a numpy index of slot numbers that the Python layer owns. Each kernel takes
# C-contiguous int64 "positions" (1-D (n,) or 2-D (n, k)) into one or two stores and runs one
# loop over arena slots through the op table (op_forward, linear_value, reduce_value), so every
# element is the very node the scalar operator would make, with the same bits. Every argument is
# checked, and every forward error found, before the first node is created: a kernel either
# builds all its nodes or none.

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_STRIDES, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.list cimport PyList_New, PyList_SET_ITEM
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc
from libc.string cimport memcpy

import sys as _sys

cdef object _numpy = None


cdef object numpy_module():
    """numpy, imported on first use (the scalar engine does not need it)."""
    global _numpy
    if _numpy is None:
        import numpy
        _numpy = numpy
    return _numpy


@cython.final
cdef class NodeStore:
    """The nodes of one or more MLArrays: one reference per slot (opaque to the layer)."""

    def __cinit__(self):
        global live_stores
        self.slots = NULL
        self.n = 0
        self.prev = NULL
        self.next = live_stores
        if live_stores != NULL:
            (<NodeStore>live_stores).prev = <PyObject*>self
        live_stores = <PyObject*>self

    def __dealloc__(self):
        global live_stores
        if self.prev != NULL:
            (<NodeStore>self.prev).next = self.next
        else:
            live_stores = self.next
        if self.next != NULL:
            (<NodeStore>self.next).prev = self.prev
        decref_nodes(self.slots, self.n)
        free(self.slots)

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"<michigrad NodeStore of {self.n} nodes>"


cdef PyObject* live_stores = NULL  # head of the list of live NodeStores


cdef dict store_references():
    """{node: references held by live NodeStores}, for _arena_check."""
    cdef dict counts = {}
    cdef PyObject* s = live_stores
    cdef Py_ssize_t k
    while s != NULL:
        for k in range((<NodeStore>s).n):
            node = (<NodeStore>s).slots[k]
            counts[node] = counts.get(node, 0) + 1
        s = (<NodeStore>s).next
    return counts


cdef NodeStore new_store(Py_ssize_t n):
    """An empty store with room for n slots (its n stays 0 until the caller fills them)."""
    cdef NodeStore store = NodeStore.__new__(NodeStore)
    if n > INT32_MAX:
        raise MemoryError(f"michigrad: {n} nodes do not fit the node arena")
    store.slots = <int32_t*>malloc(<size_t>(n if n > 0 else 1) * sizeof(int32_t))
    if store.slots == NULL:
        raise MemoryError(f"michigrad: cannot allocate a store of {n} nodes")
    return store


# ============================================================================ array arguments

cdef enum ArgKind:
    ARG_INT64 = 0
    ARG_FLOAT64 = 1
    ARG_BOOL = 2


@cython.final
cdef class _ArrayArg:
    """A C-contiguous numpy array passed to a kernel, held through the buffer protocol."""
    cdef Py_buffer view
    cdef bint held
    cdef Py_ssize_t n   # rows (the length of a 1-D array)
    cdef Py_ssize_t k   # columns of a 2-D array (1 for a 1-D array)

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef char NATIVE_ORDER = b'<' if _sys.byteorder == "little" else b'>'


cdef inline bint format_is(const char* fmt, const char* codes) noexcept:
    """fmt is one of the one-letter struct codes in `codes`, in this machine's byte order: with
    no prefix, '@' or '=' (native), or the explicit '<' or '>' that names the native order."""
    if fmt == NULL:
        return False
    if fmt[0] == b'=' or fmt[0] == b'@' or fmt[0] == NATIVE_ORDER:
        fmt += 1
    if fmt[0] == 0 or fmt[1] != 0:
        return False
    while codes[0] != 0:
        if codes[0] == fmt[0]:
            return True
        codes += 1
    return False


cdef _ArrayArg array_arg(object obj, int kind, int ndim, str what):
    """obj as a C-contiguous numpy array of `kind` with `ndim` dimensions, else TypeError (not
    an array, wrong dtype) or ValueError (wrong number of dimensions, not C-contiguous)."""
    cdef _ArrayArg arg = _ArrayArg.__new__(_ArrayArg)
    cdef str dtype = ("int64", "float64", "bool")[kind]
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{what} must be a C-contiguous {dtype} numpy array, not {type(obj).__name__}")
    PyObject_GetBuffer(obj, &arg.view, PyBUF_FORMAT | PyBUF_STRIDES)
    arg.held = True
    cdef bint ok
    if kind == ARG_INT64:
        ok = arg.view.itemsize == 8 and format_is(arg.view.format, b"lq")
    elif kind == ARG_FLOAT64:
        ok = arg.view.itemsize == 8 and format_is(arg.view.format, b"d")
    else:
        ok = arg.view.itemsize == 1 and format_is(arg.view.format, b"?")
    if not ok:
        raise TypeError(f"{what} must be an array of dtype {dtype}, not one of format "
                        f"{(<bytes>arg.view.format).decode('ascii', 'replace')!r}")
    if arg.view.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, not {arg.view.ndim}-D")
    if not PyBuffer_IsContiguous(&arg.view, b'C'):
        raise ValueError(f"{what} must be C-contiguous (np.ascontiguousarray)")
    arg.n = arg.view.shape[0]
    arg.k = arg.view.shape[1] if ndim == 2 else 1
    return arg


cdef _ArrayArg positions_arg(object obj, NodeStore store, int ndim, str what):
    """Positions into `store`: an int64 array whose every entry is a slot of it (IndexError)."""
    cdef _ArrayArg arg = array_arg(obj, ARG_INT64, ndim, what)
    cdef const int64_t* p = <const int64_t*>arg.view.buf
    cdef Py_ssize_t k, total = arg.n * arg.k
    for k in range(total):
        if <uint64_t>p[k] >= <uint64_t>store.n:
            raise IndexError(f"{what}: position {p[k]} is out of range for a store of "
                             f"{store.n} slots")
    return arg


cdef inline const int64_t* pos_of(_ArrayArg arg) noexcept:
    return <const int64_t*>arg.view.buf


cdef int same_length(Py_ssize_t n, Py_ssize_t m, str what) except -1:
    if n != m:
        raise ValueError(f"{what}: lengths differ ({n} and {m})")
    return 0


cdef int32_t slot_node(NodeStore store, object slot) except -1:
    """The node at `slot` (a Python int) of the store, or IndexError."""
    cdef Py_ssize_t k = slot
    if not 0 <= k < store.n:
        raise IndexError(f"slot {k} is out of range for a store of {store.n} slots")
    return store.slots[k]


# ============================================================================ storage

cdef _ArrayArg int_flags_arg(object is_int, Py_ssize_t n, str what):
    """is_int (bool, 1-D, n entries) as a buffer, or None when it is None."""
    if is_int is None:
        return None
    cdef _ArrayArg flags = array_arg(is_int, ARG_BOOL, 1, "is_int")
    same_length(n, flags.n, what)
    return flags


cdef inline bint held_as_int(const char* ints, Py_ssize_t k, double x) noexcept nogil:
    """Whether number k is held as a Python int: marked in ints (NULL: none is) and an integer
    a double holds exactly (|x| < 2**53), as Value(1) holds one."""
    return ints != NULL and ints[k] and fits_int(x) and x == floor(x)


def array_from_numbers(data, is_int=None):
    """A store of new leaves, one per number of `data` (float64, 1-D); where is_int[k] (bool,
    1-D) and data[k] is an integer a double holds exactly (|x| < 2**53), the leaf holds a
    Python int, as Value(1) does; otherwise the float."""
    cdef _ArrayArg values = array_arg(data, ARG_FLOAT64, 1, "data")
    cdef Py_ssize_t n = values.n, k
    cdef const double* x = <const double*>values.view.buf
    cdef _ArrayArg flags = int_flags_arg(is_int, n, "array_from_numbers: data and is_int")
    cdef const char* ints = <const char*>flags.view.buf if flags is not None else NULL
    cdef NodeStore out = new_store(n)
    reserve(<int32_t>n)
    cdef int32_t i
    cdef bint as_int
    for k in range(n):
        as_int = held_as_int(ints, k, x[k])
        i = new_node(x[k] + 0.0 if as_int else x[k], int_flag(as_int), OP_LEAF, -1, -1)
        A.nodes[i].refcnt = 1
        out.slots[k] = i
    out.n = n
    return out


def array_from_values(values):
    """A store referencing the given Values' nodes (no new node)."""
    cdef list items = list(values)
    cdef Py_ssize_t n = len(items), k
    for k in range(n):
        item = items[k]
        if not isinstance(item, Value):
            raise TypeError(f"array_from_values: items must be Values of the compiled engine, "
                            f"not {type(item).__module__}.{type(item).__qualname__}")
        index_of(<Value>item)
    cdef NodeStore out = new_store(n)
    for k in range(n):
        out.slots[k] = (<Value>items[k])._i
        incref_node(out.slots[k])
    out.n = n
    return out


def array_value(NodeStore store not None, slot):
    """The Value of the node at `slot` (its live handle if it has one: identity is stable)."""
    return handle_of(slot_node(store, slot))


def array_values(NodeStore store not None, pos):
    """[Value of each position's node]"""
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef const int64_t* q = pos_of(p)
    cdef Py_ssize_t k
    cdef list out = PyList_New(p.n)
    for k in range(p.n):
        v = handle_of(store.slots[q[k]])
        Py_INCREF(v)
        PyList_SET_ITEM(out, k, v)
    return out


def array_numbers(NodeStore store not None, pos):
    """[data of each position's node], as Python ints and floats (as Value.data gives them)."""
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef const int64_t* q = pos_of(p)
    cdef Py_ssize_t k
    cdef Node* n
    cdef list out = PyList_New(p.n)
    for k in range(p.n):
        n = &A.nodes[store.slots[q[k]]]
        v = number_object(n.data, n.flags & F_DATA_INT)
        Py_INCREF(v)
        PyList_SET_ITEM(out, k, v)
    return out


cdef object read_field(NodeStore store, object pos, bint grad):
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef const int64_t* q = pos_of(p)
    cdef Py_ssize_t k
    out = numpy_module().empty(p.n, dtype=numpy_module().float64)
    cdef double[::1] o = out
    cdef Node* nodes = A.nodes
    if grad:
        for k in range(p.n):
            o[k] = nodes[store.slots[q[k]]].grad
    else:
        for k in range(p.n):
            o[k] = nodes[store.slots[q[k]]].data
    return out


def array_data(NodeStore store not None, pos):
    """The data of each position's node, as a float64 array."""
    return read_field(store, pos, False)


def array_grad(NodeStore store not None, pos):
    """The grad of each position's node, as a float64 array."""
    return read_field(store, pos, True)


def array_set_data(NodeStore store not None, pos, values, is_int=None):
    """Each position's node gets data = values[k]: a Python int where is_int[k] and the value is
    an integer a double holds exactly (array_from_numbers' rule), else the float."""
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef _ArrayArg v = array_arg(values, ARG_FLOAT64, 1, "values")
    same_length(p.n, v.n, "array_set_data: pos and values")
    cdef _ArrayArg flags = int_flags_arg(is_int, p.n, "array_set_data: pos and is_int")
    cdef const char* ints = <const char*>flags.view.buf if flags is not None else NULL
    cdef const int64_t* q = pos_of(p)
    cdef const double* x = <const double*>v.view.buf
    cdef Py_ssize_t k
    cdef Node* n
    cdef bint as_int
    for k in range(p.n):
        n = &A.nodes[store.slots[q[k]]]
        as_int = held_as_int(ints, k, x[k])
        n.data = x[k] + 0.0 if as_int else x[k]
        n.flags = (n.flags | F_DATA_INT) if as_int else (n.flags & ~F_DATA_INT)


def array_zero_grad(NodeStore store not None, pos):
    """Each position's node gets grad = 0 (the int, as micrograd's zero_grad sets it)."""
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef const int64_t* q = pos_of(p)
    cdef Py_ssize_t k
    cdef Node* n
    for k in range(p.n):
        n = &A.nodes[store.slots[q[k]]]
        n.grad = 0.0
        n.flags |= F_GRAD_INT


def array_assign(NodeStore store not None, pos, NodeStore src not None, src_pos):
    """Slot pos[k] of store now references the node at src_pos[k] of src (the old node is
    released). All sources are read before any slot is written, so src may be store itself."""
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    cdef _ArrayArg s = positions_arg(src_pos, src, 1, "src_pos")
    same_length(p.n, s.n, "array_assign: pos and src_pos")
    cdef Py_ssize_t k, n = p.n
    cdef const int64_t* q = pos_of(p)
    cdef const int64_t* r = pos_of(s)
    cdef int32_t* moved = <int32_t*>malloc(<size_t>(n if n > 0 else 1) * sizeof(int32_t))
    if moved == NULL:
        raise MemoryError()
    cdef int32_t old
    for k in range(n):  # the new nodes, and a reference to each, before anything is released
        moved[k] = src.slots[r[k]]
        incref_node(moved[k])
    for k in range(n):
        old = store.slots[q[k]]
        store.slots[q[k]] = moved[k]
        moved[k] = old
    decref_nodes(moved, n)  # releasing may run Python code (a custom op's closure): last
    free(moved)


def array_backward(NodeStore store not None, slot):
    """Value.backward() from the node at `slot`."""
    run_backward(slot_node(store, slot))


# ============================================================================ operations

cdef dict UNARY_OPS = {
    "exp": OP_EXP, "log": OP_LOG, "tanh": OP_TANH, "relu": OP_RELU, "sigmoid": OP_SIGMOID,
    "abs": OP_ABS, "powc": OP_POWC, "leaky_relu": OP_LEAKY_RELU, "elu": OP_ELU, "std": OP_STD,
}
cdef dict BINARY_OPS = {"add": OP_ADD, "mul": OP_MUL, "pow": OP_POW}
cdef dict REDUCE_OPS = {"sum": OP_SUM, "max": OP_MAX, "min": OP_MIN}


cdef uint16_t op_code(dict ops, object op, str kernel) except 0xFFFF:
    if not isinstance(op, str):
        raise TypeError(f"{kernel}: op must be a str, not {type(op).__name__}")
    code = ops.get(op)
    if code is None:
        raise ValueError(f"{kernel}: unknown op {op!r} (one of {', '.join(ops)})")
    return <uint16_t>code


ctypedef struct Result:
    double data
    bint is_int


cdef Result* results_buffer(Py_ssize_t n) except NULL:
    cdef Result* out = <Result*>malloc(<size_t>(n if n > 0 else 1) * sizeof(Result))
    if out == NULL:
        raise MemoryError(f"michigrad: out of memory for {n} results")
    return out


cdef inline bint may_fail(uint16_t op) noexcept nogil:
    """Ops whose forward can raise (exp, log, the powers): their values are all computed and
    checked before the first node is made. The others are computed as each node is made."""
    return op == OP_EXP or op == OP_LOG or op == OP_POWC or op == OP_POW or op == OP_STD


cdef inline void load_operands(Node* nodes, int32_t i, int32_t j, double c, bint c_int,
                               double* x, bint* xi, double* y, bint* yi) noexcept nogil:
    """op_forward's operands: node i's data, and node j's data (j >= 0) or the op constant c."""
    x[0] = nodes[i].data
    xi[0] = (nodes[i].flags & F_DATA_INT) != 0
    if j >= 0:
        y[0] = nodes[j].data
        yi[0] = (nodes[j].flags & F_DATA_INT) != 0
    else:
        y[0] = c
        yi[0] = c_int


cdef inline void drop_operand_refs(Node* nodes, NodeStore a, const int64_t* a_pos,
                                   const int32_t* b_slots, const int64_t* b_pos,
                                   Py_ssize_t n) noexcept nogil:
    """Give back the references checked_results took for the first n operands (the stores still
    hold theirs, so no count reaches zero)."""
    cdef Py_ssize_t k
    for k in range(n):
        nodes[a.slots[a_pos[k]]].refcnt -= 1
        if b_slots != NULL:
            nodes[b_slots[b_pos[k]]].refcnt -= 1


cdef int checked_results(uint16_t op, NodeStore a, const int64_t* a_pos, const int32_t* b_slots,
                         const int64_t* b_pos, Py_ssize_t n, double c, bint c_int,
                         Result* res) except -1:
    """A fallible op's n values, computed and checked before any node is made, each operand
    node read once: the reference its new node will hold is taken as its data is read (so that
    making the nodes does not touch the operands again: on a million elements that second visit
    was about a tenth of exp's time). On an error the references are given back and the op's
    exception raised: nothing has changed."""
    cdef Node* nodes = A.nodes
    cdef double x, y
    cdef bint xi, yi
    cdef int error
    cdef int32_t i, j = -1
    cdef Py_ssize_t k
    for k in range(n):
        i = a.slots[a_pos[k]]
        if b_slots != NULL:
            j = b_slots[b_pos[k]]
        load_operands(nodes, i, j, c, c_int, &x, &xi, &y, &yi)
        error = op_forward(op, x, xi, y, yi, &res[k].data, &res[k].is_int)
        if error:
            drop_operand_refs(nodes, a, a_pos, b_slots, b_pos, k)
            return raise_forward_error(error, op, x, xi, y, yi)
        nodes[i].refcnt += 1
        if j >= 0:
            nodes[j].refcnt += 1
    return 0


cdef NodeStore elementwise(uint16_t op, NodeStore a, const int64_t* a_pos, NodeStore b,
                           const int64_t* b_pos, Py_ssize_t n, double c, bint c_int):
    """One node `op` per k, over a's node at a_pos[k] and b's at b_pos[k] (b None: a unary op;
    c is the op constant of '**c', 'leaky_relu' and 'elu'), each exactly the node the scalar
    operator makes. A forward error raises before any node is made."""
    cdef Result* res = NULL
    cdef int32_t* b_slots = b.slots if b is not None else NULL
    cdef double x, y, r
    cdef bint xi, yi, ri
    cdef int32_t i, j = -1
    cdef Py_ssize_t k
    cdef NodeStore out
    try:
        out = new_store(n)
        reserve(<int32_t>n)  # (may move the arena: checked_results reads A.nodes after it)
        if may_fail(op):
            res = results_buffer(n)
            checked_results(op, a, a_pos, b_slots, b_pos, n, c, c_int, res)
    except BaseException:
        free(res)
        raise
    cdef Node* nodes = A.nodes
    cdef bint has_aux = op == OP_POWC or op == OP_LEAKY_RELU or op == OP_ELU or op == OP_STD
    cdef uint16_t aux_flag = F_AUX_INT if c_int else 0
    cdef Node* node
    for k in range(n):  # nothing below can fail
        i = a.slots[a_pos[k]]
        if b_slots != NULL:
            j = b_slots[b_pos[k]]
        if res != NULL:  # checked_results holds the operands' references: adopt them
            node = &nodes[adopting_node(res[k].data, int_flag(res[k].is_int), op, i, j)]
        else:
            load_operands(nodes, i, j, c, c_int, &x, &xi, &y, &yi)
            op_forward(op, x, xi, y, yi, &r, &ri)
            node = &nodes[new_node(r, int_flag(ri), op, i, j)]
        node.refcnt = 1
        if has_aux:
            node.aux.c = c
            node.flags |= aux_flag
        out.slots[k] = <int32_t>(node - nodes)
    out.n = n
    free(res)
    return out


def array_unary(op, NodeStore store not None, pos, c=0.0):
    """One new node per position: op in exp, log, tanh, relu, sigmoid, abs, powc (x ** c, as
    Value's `x ** c`: pass an int c for int semantics), leaky_relu (slope c), elu (alpha c),
    std (x ** 0.5, with no gradient where it is 0: a variance's root, as PyTorch's std)."""
    cdef uint16_t code = op_code(UNARY_OPS, op, "array_unary")
    cdef double cv
    cdef bint ci
    require_number(c, &cv, &ci, "array_unary: c")
    if code == OP_STD:  # the root of '**0.5'
        cv, ci = 0.5, False
    elif code != OP_POWC and code != OP_LEAKY_RELU and code != OP_ELU:
        cv, ci = 0.0, False  # no op constant: the node is exactly Value's
    cdef _ArrayArg p = positions_arg(pos, store, 1, "pos")
    return elementwise(code, store, pos_of(p), None, NULL, p.n, cv, ci)


def array_binary(op, NodeStore a not None, a_pos, NodeStore b not None, b_pos):
    """One new node per position pair: op in add ('+'), mul ('*'), pow (Value ** Value)."""
    cdef uint16_t code = op_code(BINARY_OPS, op, "array_binary")
    cdef _ArrayArg p = positions_arg(a_pos, a, 1, "a_pos")
    cdef _ArrayArg r = positions_arg(b_pos, b, 1, "b_pos")
    same_length(p.n, r.n, "array_binary: a_pos and b_pos")
    return elementwise(code, a, pos_of(p), b, pos_of(r), p.n, 0.0, False)


cdef int32_t** children_arrays(Py_ssize_t n, int32_t nkids) except NULL:
    """n malloc'd arrays of nkids children (nkids > 2), each to be owned by one new node: all
    allocated before the first node is made, so that nothing can fail once nodes are."""
    cdef int32_t** arrays = <int32_t**>calloc(<size_t>(n if n > 0 else 1), sizeof(int32_t*))
    cdef Py_ssize_t r
    if arrays == NULL:
        raise MemoryError("michigrad: out of memory for the children of new nodes")
    for r in range(n):
        arrays[r] = <int32_t*>malloc(<size_t>nkids * sizeof(int32_t))
        if arrays[r] == NULL:
            free_children_arrays(arrays, n)
            raise MemoryError("michigrad: out of memory for the children of new nodes")
    return arrays


cdef void free_children_arrays(int32_t** arrays, Py_ssize_t n) noexcept:
    """Free what children_arrays made (entries already handed to a node are NULL)."""
    cdef Py_ssize_t r
    if arrays != NULL:
        for r in range(n):
            free(arrays[r])
        free(arrays)


cdef inline void attach_kids(Node* node, int32_t* kids, int32_t nkids) noexcept nogil:
    """Give a node made by new_node(..., -1, -1) its children, filled in by the caller (who
    has counted the references): the layout kid() reads (a malloc'd array is now the node's)."""
    node.nkids = nkids
    if nkids > 2:
        node.kids.many = kids
    else:
        node.kids.pair[0] = kids[0] if nkids > 0 else -1
        node.kids.pair[1] = kids[1] if nkids > 1 else -1


cdef _ArrayArg bias_positions(object bias, object b_pos, Py_ssize_t rows, str kernel):
    """The checked b_pos of a kernel's optional bias (one position per row), or None."""
    if (bias is None) != (b_pos is None):
        raise ValueError(f"{kernel}: give both bias and b_pos, or neither")
    if bias is None:
        return None
    if not isinstance(bias, NodeStore):
        raise TypeError(f"{kernel}: bias must be a NodeStore or None, not {type(bias).__name__}")
    cdef _ArrayArg bp = positions_arg(b_pos, <NodeStore>bias, 1, "b_pos")
    same_length(rows, bp.n, f"{kernel}: rows and b_pos")
    return bp


def array_linear(NodeStore w not None, w_pos, NodeStore x not None, x_pos, bias=None, b_pos=None):
    """n nodes 'linear', row r exactly `michigrad.linear(w[w_pos[r]], x[x_pos[r]], bias[b_pos[r]])`:
    children [bias,] w..., x..., value summed left to right (bit-identical). It is
    array_matmul with one w row and one x row per batch."""
    cdef _ArrayArg wp = positions_arg(w_pos, w, 2, "w_pos")
    cdef _ArrayArg xp = positions_arg(x_pos, x, 2, "x_pos")
    if wp.n != xp.n or wp.k != xp.k:
        raise ValueError(f"array_linear: w_pos has shape ({wp.n}, {wp.k}) but x_pos "
                         f"({xp.n}, {xp.k})")
    return array_matmul(w, w_pos, x, x_pos, wp.n, bias, b_pos)


def max_of(values):
    """The first largest of the Values (the first NaN if any, as NumPy) as one node 'max',
    keeping its int/float kind; backward sends the gradient to that one child. The node of
    MLArray's max reduction (array_reduce's OP_MAX), for scalar code: no numpy needed."""
    cdef list vs = list(values)
    cdef Py_ssize_t n = len(vs), k
    if n == 0:
        raise ValueError("max_of: needs at least one Value")
    for k in range(n):
        if not isinstance(vs[k], Value):
            raise TypeError(f"max_of: values must be Values of the compiled engine, not "
                            f"{type(vs[k]).__module__}.{type(vs[k]).__qualname__}")
        index_of(<Value>vs[k])
    if n > INT32_MAX:
        raise MemoryError("max_of: too many values")
    cdef int32_t nkids = <int32_t>n
    cdef int32_t** arrays = children_arrays(1, nkids) if nkids > 2 else NULL
    try:
        reserve(1)
    except BaseException:
        free_children_arrays(arrays, 1)
        raise
    # nothing below can fail
    cdef int32_t pair[2]
    cdef int32_t* kids = pair
    if arrays != NULL:
        kids = arrays[0]
        free(arrays)  # the node owns arrays[0]
    for k in range(n):
        kids[k] = (<Value>vs[k])._i
        A.nodes[kids[k]].refcnt += 1
    cdef bint value_int
    cdef double value = reduce_value(A.nodes, OP_MAX, kids, nkids, &value_int)
    cdef int32_t i = new_node(value, int_flag(value_int), OP_MAX, -1, -1)
    attach_kids(&A.nodes[i], kids, nkids)
    return new_handle(i)

cdef KidBlock** new_blocks(Py_ssize_t count, int32_t n) except NULL:
    """count shared blocks of n children each (refcnt 0, children to be filled in), in one slab,
    and the array of pointers to them: all allocated before the first node is made, so that
    nothing can fail once nodes are."""
    global live_blocks
    # each block is the struct then its n children, rounded up to keep the next one aligned
    cdef size_t stride = (sizeof(KidBlock) + <size_t>n * sizeof(int32_t) + 7) // 8 * 8
    cdef Py_ssize_t r
    if count <= 0 or <size_t>count > (SIZE_MAX - sizeof(BlockSlab)) // stride:
        raise MemoryError("michigrad: out of memory for the operand rows of a matmul")
    cdef BlockSlab* slab = <BlockSlab*>malloc(sizeof(BlockSlab) + <size_t>count * stride)
    if slab == NULL:
        raise MemoryError("michigrad: out of memory for the operand rows of a matmul")
    cdef KidBlock** blocks = <KidBlock**>malloc(<size_t>count * sizeof(KidBlock*))
    if blocks == NULL:
        free(slab)
        raise MemoryError("michigrad: out of memory for the operand rows of a matmul")
    slab.live = count
    cdef char* at = <char*>(slab + 1)
    for r in range(count):
        blocks[r] = <KidBlock*>(at + <size_t>r * stride)
        blocks[r].refcnt = 0
        blocks[r].mark = 0
        blocks[r].n = n
        blocks[r].nleaves = 0
        blocks[r].slab = slab
        blocks[r].kids = <int32_t*>(blocks[r] + 1)  # the children follow the struct
    live_blocks += count
    return blocks


cdef void free_blocks(KidBlock** blocks, Py_ssize_t count) noexcept:
    """Free what new_blocks made, before any node took a block (or NULL: nothing)."""
    global live_blocks
    if blocks != NULL:
        free(blocks[0].slab)
        free(blocks)
        live_blocks -= count


ctypedef struct GridRows:
    # One operand of array_matmul, resolved once: row r's nodes and their data (r * m ...), and
    # whether any of them holds an int (a pair of such rows takes linear_value's int-aware path).
    int32_t* nodes
    double* data
    char* has_int


cdef int resolve_rows(NodeStore store, const int64_t* pos, Py_ssize_t rows, Py_ssize_t m,
                      GridRows* out) except -1:
    """out <- the nodes, data and int flags of the rows of positions pos (rows, m)."""
    cdef size_t cells = <size_t>(rows * m if rows * m > 0 else 1)
    out.nodes = <int32_t*>malloc(cells * sizeof(int32_t))
    out.data = <double*>malloc(cells * sizeof(double))
    out.has_int = <char*>malloc(<size_t>(rows if rows > 0 else 1))
    if out.nodes == NULL or out.data == NULL or out.has_int == NULL:
        raise MemoryError("michigrad: out of memory for the operands of a matmul")
    cdef Py_ssize_t r, k
    cdef Node* node
    for r in range(rows):
        out.has_int[r] = 0
        for k in range(r * m, r * m + m):
            out.nodes[k] = store.slots[pos[k]]
            node = &A.nodes[out.nodes[k]]
            out.data[k] = node.data
            if node.flags & F_DATA_INT:
                out.has_int[r] = 1
    return 0


cdef void free_rows(GridRows* rows) noexcept:
    free(rows.nodes)
    free(rows.data)
    free(rows.has_int)


cdef inline void grid_pair(Py_ssize_t bt, Py_ssize_t P, Py_ssize_t Q, Py_ssize_t outer,
                           Py_ssize_t inner, bint x_major, Py_ssize_t* p, Py_ssize_t* q) noexcept nogil:
    """The w row p and x row q of array_matmul's output (bt, outer, inner)."""
    p[0] = bt * P + (inner if x_major else outer)
    q[0] = bt * Q + (outer if x_major else inner)


cdef inline bint float_rows(GridRows* wr, GridRows* xr, Py_ssize_t m, Py_ssize_t bt, Py_ssize_t P,
                            Py_ssize_t Q, Py_ssize_t outer, Py_ssize_t inner, bint x_major,
                            Py_ssize_t count) noexcept nogil:
    """Whether outputs inner .. inner+count-1 of the row all take the float sum: each pairs rows
    of which one has no int (an int product needs two ints), so every product is a float."""
    cdef Py_ssize_t k, p, q
    if m == 0:
        return False
    for k in range(count):
        grid_pair(bt, P, Q, outer, inner + k, x_major, &p, &q)
        if wr.has_int[p] and xr.has_int[q]:
            return False
    return True


cdef enum:
    # sums computed side by side by mg_dots (_vector_kernels.pxi): 32 where an output row has
    # 32 left (four AVX-512 vectors), else 16, else 8, else one by one
    WIDE_DOTS = 32
    DOTS = 8


cdef double* transposed_rows(const double* data, Py_ssize_t batches, Py_ssize_t rows,
                             Py_ssize_t m) except NULL:
    """A malloc'd copy of batches blocks of rows x m doubles, each block transposed (m x rows):
    mg_dots' columns."""
    cdef double* t = <double*>malloc(<size_t>(batches * rows * m if batches * rows * m > 0 else 1)
                                     * sizeof(double))
    if t == NULL:
        raise MemoryError("michigrad: out of memory for the operands of a matmul")
    cdef Py_ssize_t bt, r, k, block = rows * m
    for bt in range(batches):
        for r in range(rows):
            for k in range(m):
                t[bt * block + k * rows + r] = data[bt * block + r * m + k]
    return t


cdef inline void own_pair(int32_t* pair, GridRows* wr, GridRows* xr, NodeStore b, const int64_t* bq,
                          bint has_bias, Py_ssize_t m, Py_ssize_t p, Py_ssize_t q) noexcept:
    """The children of a matmul node with at most two ([bias,] w[0], x[0]): its own pair."""
    if has_bias:
        pair[0] = b.slots[bq[p]]
    if m > 0:
        pair[has_bias] = wr.nodes[p * m]
        pair[has_bias + 1] = xr.nodes[q * m]


def array_matmul(NodeStore w not None, w_rows, NodeStore x not None, x_rows, Py_ssize_t batches,
                 bias=None, b_pos=None, bint x_major=False):
    """Every pairing of a w row with an x row, batch by batch: with P = len(w_rows) / batches and
    Q = len(x_rows) / batches, the node for (b, p, q) is exactly array_linear's row for
    w_pos = w_rows[b*P + p], x_pos = x_rows[b*Q + q] (and b_pos[b*P + p]), laid out (b, p, q) --
    a matmul: w rows are a's rows, x rows b's columns -- or (b, q, p) when x_major (a dense
    layer: one output row per input row). Each operand row is read once, not once per output
    (array_linear would need batches*P*Q rows of positions): the matmul/dense kernel."""
    cdef _ArrayArg wp = positions_arg(w_rows, w, 2, "w_rows")
    cdef _ArrayArg xp = positions_arg(x_rows, x, 2, "x_rows")
    if wp.k != xp.k:
        raise ValueError(f"array_matmul: w_rows has rows of {wp.k} positions but x_rows of {xp.k}")
    if batches < 0 or (batches == 0 and (wp.n or xp.n)) or (
            batches > 0 and (wp.n % batches or xp.n % batches)):
        raise ValueError(f"array_matmul: {wp.n} w rows and {xp.n} x rows do not split into "
                         f"{batches} batches")
    cdef _ArrayArg bp = bias_positions(bias, b_pos, wp.n, "array_matmul")
    cdef NodeStore b = <NodeStore>bias if bp is not None else None
    cdef const int64_t* bq = pos_of(bp) if bp is not None else NULL
    cdef Py_ssize_t m = wp.k
    cdef Py_ssize_t P = wp.n // batches if batches else 0
    cdef Py_ssize_t Q = xp.n // batches if batches else 0
    cdef bint has_bias = b is not None
    if P == 0 or Q == 0:  # no node to make (however long the rows): nothing to resolve
        return new_store(0)
    if 2 * m + 1 > INT32_MAX:
        raise MemoryError("array_matmul: too many inputs per row")
    if batches > INT32_MAX // P // Q:
        raise MemoryError(f"michigrad: {batches} x {P} x {Q} nodes do not fit the node arena")
    cdef Py_ssize_t total = batches * P * Q
    cdef int32_t nkids = <int32_t>(2 * m + has_bias)
    cdef bint shared = nkids > 2  # else one or two children: the node's own pair
    cdef GridRows wr, xr
    wr.nodes = xr.nodes = NULL
    wr.data = xr.data = NULL
    wr.has_int = xr.has_int = NULL
    cdef KidBlock** w_blocks = NULL
    cdef KidBlock** x_blocks = NULL
    cdef double* columns = NULL  # the inner operand's rows transposed, for mg_dots
    cdef double* row_values = NULL  # one output row's values and int flags, before its nodes
    cdef bint* row_ints = NULL
    cdef NodeStore out
    try:
        resolve_rows(w, pos_of(wp), wp.n, m, &wr)
        resolve_rows(x, pos_of(xp), xp.n, m, &xr)
        out = new_store(total)
        if shared:
            w_blocks = new_blocks(wp.n, <int32_t>(m + has_bias))
            x_blocks = new_blocks(xp.n, <int32_t>m)
        if (P if x_major else Q) >= DOTS:
            columns = transposed_rows(wr.data if x_major else xr.data, batches, P if x_major else Q, m)
        row_values = <double*>malloc(<size_t>(P if P > Q else Q) * sizeof(double))
        row_ints = <bint*>malloc(<size_t>(P if P > Q else Q) * sizeof(bint))
        if row_values == NULL or row_ints == NULL:
            raise MemoryError("michigrad: out of memory for a matmul")
        reserve(<int32_t>total)
    except BaseException:
        free_rows(&wr)
        free_rows(&xr)
        free_blocks(w_blocks, wp.n)
        free_blocks(x_blocks, xp.n)
        free(columns)
        free(row_values)
        free(row_ints)
        raise
    # nothing below can fail
    cdef Node* nodes = A.nodes
    cdef Py_ssize_t e, bt, outer, inner, p, q, k, width, r = 0
    if shared:  # each row's nodes are referenced once, by its block
        for e in range(wp.n):
            if has_bias:
                w_blocks[e].kids[0] = b.slots[bq[e]]
            memcpy(w_blocks[e].kids + has_bias, wr.nodes + e * m, <size_t>m * sizeof(int32_t))
            for k in range(w_blocks[e].n):
                nodes[w_blocks[e].kids[k]].refcnt += 1
                w_blocks[e].nleaves += nodes[w_blocks[e].kids[k]].nkids == 0
        for e in range(xp.n):
            memcpy(x_blocks[e].kids, xr.nodes + e * m, <size_t>m * sizeof(int32_t))
            for k in range(m):
                nodes[x_blocks[e].kids[k]].refcnt += 1
                x_blocks[e].nleaves += nodes[x_blocks[e].kids[k]].nkids == 0
    else:  # each node references its (at most two) children itself
        for e in range(wp.n * m):  # every w node is read by the Q outputs of its row's batch
            nodes[wr.nodes[e]].refcnt += <uint32_t>Q
        for e in range(xp.n * m):
            nodes[xr.nodes[e]].refcnt += <uint32_t>P
        if has_bias:
            for e in range(bp.n):
                nodes[b.slots[bq[e]]].refcnt += <uint32_t>Q
    cdef Py_ssize_t n_outer = Q if x_major else P, n_inner = P if x_major else Q
    cdef int32_t pair[2]
    cdef const double* shared_row
    cdef double value
    cdef bint value_int
    cdef int32_t i
    cdef Node* node
    for bt in range(batches):
        for outer in range(n_outer):
            # the values of this output row first: 32, 16 or 8 sums at a time where they can
            # be (see mg_dots), one at a time where a pair of rows holds ints
            inner = 0
            while inner < n_inner:
                width = WIDE_DOTS
                while width >= DOTS and not (inner + width <= n_inner and float_rows(
                        &wr, &xr, m, bt, P, Q, outer, inner, x_major, width)):
                    width //= 2
                if width >= DOTS:
                    for k in range(width):
                        grid_pair(bt, P, Q, outer, inner + k, x_major, &p, &q)
                        row_values[inner + k] = nodes[b.slots[bq[p]]].data if has_bias else 0.0
                        row_ints[inner + k] = False
                    shared_row = (xr.data + q * m) if x_major else (wr.data + p * m)
                    mg_dots(shared_row, columns + bt * n_inner * m + inner, n_inner,
                            row_values + inner, m, <int>width)
                    inner += width
                    continue
                grid_pair(bt, P, Q, outer, inner, x_major, &p, &q)
                if float_rows(&wr, &xr, m, bt, P, Q, outer, inner, x_major, 1):
                    value = nodes[b.slots[bq[p]]].data if has_bias else 0.0
                    for k in range(m):  # the same sum, alone
                        value = value + wr.data[p * m + k] * xr.data[q * m + k]
                    value_int = False
                elif shared:
                    value = linear_value(nodes, w_blocks[p].kids, x_blocks[q].kids, nkids, &value_int)
                else:
                    own_pair(pair, &wr, &xr, b, bq, has_bias, m, p, q)
                    value = linear_value(nodes, pair, pair + has_bias + m, nkids, &value_int)
                row_values[inner] = value
                row_ints[inner] = value_int
                inner += 1
            for inner in range(n_inner):
                grid_pair(bt, P, Q, outer, inner, x_major, &p, &q)
                i = new_node(row_values[inner], int_flag(row_ints[inner]), OP_LINEAR, -1, -1)
                node = &nodes[i]
                if shared:
                    node.nkids = nkids
                    node.kids.block = w_blocks[p]
                    node.aux.block = x_blocks[q]
                    node.flags |= F_SHARED_KIDS
                    w_blocks[p].refcnt += 1
                    x_blocks[q].refcnt += 1
                else:
                    own_pair(pair, &wr, &xr, b, bq, has_bias, m, p, q)
                    attach_kids(node, pair, nkids)
                node.refcnt = 1
                out.slots[r] = i
                r += 1
    out.n = total
    free_rows(&wr)
    free_rows(&xr)
    free(w_blocks)  # the array of pointers: the blocks are the nodes' now
    free(x_blocks)
    free(columns)
    free(row_values)
    free(row_ints)
    return out


def array_reduce(op, NodeStore store not None, pos):
    """n nodes over the k >= 1 positions of each row of pos (n, k): op sum, max or min."""
    cdef uint16_t code = op_code(REDUCE_OPS, op, "array_reduce")
    cdef _ArrayArg p = positions_arg(pos, store, 2, "pos")
    cdef Py_ssize_t n = p.n, m = p.k, r, k
    if m == 0:
        raise ValueError(f"array_reduce: {op} needs at least one element per row")
    if m > INT32_MAX:
        raise MemoryError("array_reduce: too many elements per row")
    cdef int32_t nkids = <int32_t>m
    cdef const int64_t* q = pos_of(p)
    cdef NodeStore out = new_store(n)
    cdef int32_t** arrays = children_arrays(n, nkids) if nkids > 2 else NULL
    try:
        reserve(<int32_t>n)
    except BaseException:
        free_children_arrays(arrays, n)
        raise
    # nothing below can fail
    cdef Node* nodes = A.nodes
    for k in range(n * m):
        nodes[store.slots[q[k]]].refcnt += 1
    cdef int32_t pair[2]
    cdef int32_t* kids = pair
    cdef int32_t i
    cdef double value
    cdef bint value_int
    for r in range(n):
        if arrays != NULL:
            kids = arrays[r]
            arrays[r] = NULL  # the node owns it now
        for k in range(m):
            kids[k] = store.slots[q[r * m + k]]
        value = reduce_value(nodes, code, kids, nkids, &value_int)
        i = new_node(value, int_flag(value_int), code, -1, -1)
        attach_kids(&nodes[i], kids, nkids)
        nodes[i].refcnt = 1
        out.slots[r] = i
    out.n = n
    free_children_arrays(arrays, n)
    return out
