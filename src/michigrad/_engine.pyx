# cython: language_level=3
"""michigrad's compiled core: node arena, op table, Value handles, iterative backward.

The semantics are those of the pure-Python engine in ``_reference.py`` (the executable
specification); this module computes the same IEEE operations in the same order, so forward values
and gradients are bit-identical to it. What differs is where things live:

* Every node is a 64-byte ``Node`` in one growable C array (``Arena``). A ``Value`` is a handle that
  holds the node's index. A node remembers its live handle, so ``_prev`` hands back the same
  objects; a node without a live handle costs nothing but its slot.
* Lifetime is reference counting in the arena: a node is alive while its handle or a parent refers
  to it. When the count drops to zero the slot is recycled and the children are released in a
  loop, never by recursion, so a graph of any depth is freed in constant stack.
* Built-in ops create no Python reference cycles. A custom op's ``_backward`` closure usually
  captures its own output handle; the handle type takes part in the cyclic GC and visits what its
  node holds for Python (see ``_traverse``), so such cycles are collected.
"""

cimport cython
from cpython.exc cimport PyErr_WriteUnraisable
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.long cimport PyLong_AsDouble, PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.number cimport PyIndex_Check
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.math cimport copysign, exp, expm1, fabs, floor, fmod, isfinite, isinf, isnan, log, pow, tanh, INFINITY, NAN
from libc.stdint cimport INT32_MAX, SIZE_MAX, int32_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

import operator

cdef extern from "Python.h":
    int generic_setattr "PyObject_GenericSetAttr" (PyObject* o, PyObject* name, PyObject* value) except -1
    bint PyObject_GC_IsTracked(object o)
    void PyObject_GC_Track(void* o)
    void PyObject_GC_UnTrack(void* o)
    # the GC slot types, with the exception behaviour they really have (none)
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    # the slots of a type that the handle allocator uses (Cython's PyTypeObject lacks some)
    ctypedef void (*destructor)(PyObject*) noexcept
    ctypedef struct TypeSlots "PyTypeObject":
        destructor tp_dealloc
        Py_ssize_t tp_weaklistoffset
    PyObject* PyObject_Init(PyObject* op, PyTypeObject* tp)
    void PyObject_ClearWeakRefs(PyObject* o)

# Ints are exact in a double below this magnitude; beyond it they become floats (as in _reference).
cdef double EXACT_INT_LIMIT = 9007199254740992.0  # 2**53
cdef int32_t FIRST_CAPACITY = 1024
cdef int32_t SKEW_PERIOD = 64  # grow() leaves a gap of one slot in every 64 (see there)

cdef Arena A
A.nodes = NULL
A.capacity = 0
A.free_slots = NULL
A.nfree = 0
A.free_bits = NULL
A.free_bits_words = 0
A.dying = NULL
A.ndying = 0
A.releasing = False
A.epoch = 0
A.live = 0
A.allocations = 0
A.reuses = 0
cdef unsigned long long py_backward_sets = 0  # `_backward` assignments so far (replay checks it)
cdef Py_ssize_t live_blocks = 0  # shared blocks of children (KidBlock) allocated, not yet freed
cdef Py_ssize_t row_copied_outputs = 0  # matmul nodes whose backward ran on copied rows (_sweep.pxi)
cdef Py_ssize_t panel_outputs = 0  # matmul nodes a replayed forward summed on a panel (_replay.pxi)


# ===================================================================================== the arena

cdef int grow(Py_ssize_t needed) except -1:
    """Enlarge the arena so that `needed` more nodes fit. Never leaves a half-grown state."""
    cdef Py_ssize_t capacity = A.capacity if A.capacity > 0 else FIRST_CAPACITY
    while capacity - A.live < needed or capacity == A.capacity:
        capacity *= 2
        if capacity > INT32_MAX:
            raise MemoryError("michigrad: the node arena is full (2**31 nodes)")
    cdef Node* nodes = <Node*>realloc(A.nodes, <size_t>capacity * sizeof(Node))
    if nodes == NULL:
        raise MemoryError(f"michigrad: cannot grow the node arena to {capacity} nodes")
    A.nodes = nodes  # (the old block may be gone: keep the new one even if the next step fails)
    cdef int32_t* slots = <int32_t*>realloc(A.free_slots, <size_t>capacity * sizeof(int32_t))
    if slots == NULL:
        raise MemoryError(f"michigrad: cannot grow the node arena to {capacity} nodes")
    A.free_slots = slots
    cdef int32_t* dying = <int32_t*>realloc(A.dying, <size_t>capacity * sizeof(int32_t))
    if dying == NULL:
        raise MemoryError(f"michigrad: cannot grow the node arena to {capacity} nodes")
    A.dying = dying
    memset(&nodes[A.capacity], 0, <size_t>(capacity - A.capacity) * sizeof(Node))
    cdef int32_t k, first = A.capacity if A.capacity > 0 else 1  # slot 0: never a node
    # The new slots are taken lowest first, except that every 64th waits until all the others
    # are taken. A 64-wide row of 64-byte nodes is 4 KiB, so without the gap an array's column
    # (a matmul's right operand row) would sit in one L1 cache set and evict itself: the gap
    # makes the backward of (a @ b) on fresh 64x64 arrays about 2.5x faster.
    # (nkids -1 marks a slot never handed out: with the gap, a slot's index no longer says
    # whether it was used before, which the reuse counter needs)
    for k in range(<int32_t>capacity - 1, first - 1, -1):  # pushed first: taken last
        if k % SKEW_PERIOD == SKEW_PERIOD - 1:
            nodes[k].nkids = -1
            slots[A.nfree] = k
            A.nfree += 1
    for k in range(<int32_t>capacity - 1, first - 1, -1):
        if k % SKEW_PERIOD != SKEW_PERIOD - 1:
            nodes[k].nkids = -1
            slots[A.nfree] = k
            A.nfree += 1
    if A.capacity == 0:
        A.live = 1  # the sentinel counts as used
    A.capacity = <int32_t>capacity
    return 0


cdef inline int reserve(int32_t n) except -1:
    """Make sure the next `n` new_node calls cannot fail (so no op is left half-built)."""
    if A.capacity - A.live < n:
        grow(n)
    return 0


cdef inline int32_t adopting_node(double data, uint16_t flags, uint16_t op, int32_t a,
                                  int32_t b) noexcept:
    """new_node for a caller that has already taken the references to a and b the node holds,
    and a slot in reserve (A.nfree > 0)."""
    A.nfree -= 1
    cdef int32_t i = A.free_slots[A.nfree]
    cdef Node* n = &A.nodes[i]
    if n.nkids >= 0:  # freed by decref_node (nkids 0), not fresh from grow (-1)
        A.reuses += 1
    n.data = data
    n.grad = 0.0
    n.aux.c = 0.0
    n.kids.pair[0] = a
    n.kids.pair[1] = b
    n.nkids = (a >= 0) + (b >= 0)
    n.refcnt = 0
    n.mark = 0
    n.op = op
    n.flags = flags | F_GRAD_INT  # grad starts as the int 0, as in micrograd
    n.handle = NULL
    n.extra = NULL
    A.live += 1
    A.allocations += 1
    return i


cdef inline int32_t new_node(double data, uint16_t flags, uint16_t op, int32_t a, int32_t b) except -1:
    """A fresh node with children a and b (-1 for none), holding a reference to each. Its own
    count starts at zero: the caller links it to a handle or a parent."""
    if A.nfree == 0:
        grow(1)
    cdef int32_t i = adopting_node(data, flags, op, a, b)
    if a >= 0:
        A.nodes[a].refcnt += 1
    if b >= 0:
        A.nodes[b].refcnt += 1
    return i


cdef inline int32_t kid(Node* n, int32_t k) noexcept nogil:
    if n.nkids <= 2:
        return n.kids.pair[k]
    if not (n.flags & F_SHARED_KIDS):
        return n.kids.many[k]
    if k < n.kids.block.n:
        return n.kids.block.kids[k]
    return n.aux.block.kids[k - n.kids.block.n]


cdef inline int32_t* linear_rows(Node* n, int32_t** x) noexcept nogil:
    """An OP_LINEAR node's children as two runs: returns [bias,] w[0..m) and sets *x to
    x[0..m), whether the node owns them (one array) or shares them (two blocks)."""
    if n.flags & F_SHARED_KIDS:
        x[0] = n.aux.block.kids
        return n.kids.block.kids
    cdef int32_t* kids = n.kids.many if n.nkids > 2 else n.kids.pair
    x[0] = kids + (n.nkids & 1) + (n.nkids >> 1)
    return kids


cdef inline void incref_node(int32_t i) noexcept:
    A.nodes[i].refcnt += 1


cdef inline void queue_if_dead(int32_t i) noexcept:
    cdef Node* n = &A.nodes[i]
    n.refcnt -= 1
    if n.refcnt == 0:
        A.dying[A.ndying] = i
        A.ndying += 1


cdef inline void release_block(KidBlock* block) noexcept:
    """Drop a node's reference to a shared block; the last one frees it and releases its
    children (queued on the running release loop)."""
    cdef int32_t k
    cdef BlockSlab* slab
    block.refcnt -= 1
    if block.refcnt == 0:
        for k in range(block.n):
            queue_if_dead(block.kids[k])
        slab = block.slab
        slab.live -= 1
        if slab.live == 0:
            free(slab)
        global live_blocks
        live_blocks -= 1


cdef void decref_node(int32_t i) noexcept:
    """Drop one reference to node i; free it and, iteratively, whatever only it kept alive."""
    queue_if_dead(i)
    release_queued()


cdef void decref_nodes(const int32_t* slots, Py_ssize_t n) noexcept:
    """decref_node for n slots, in one release loop (so that what they free is freed as one run,
    which release_queued puts in address order)."""
    cdef Py_ssize_t k
    for k in range(n):
        queue_if_dead(slots[k])
    release_queued()


cdef void release_queued() noexcept:
    """Free the queued nodes and, iteratively, whatever only they kept alive.

    Freeing a node may run Python code (its extra's closure holds handles of other nodes, whose
    deallocation calls back here): those releases are queued on the running loop, so the depth of
    the graph never becomes depth of the C stack."""
    if A.releasing or A.ndying == 0:
        return
    cdef Node* n
    cdef PyObject* extra
    cdef int32_t i, k
    cdef int32_t first_freed = A.nfree
    A.releasing = True
    while A.ndying > 0:
        A.ndying -= 1
        i = A.dying[A.ndying]
        n = &A.nodes[i]
        if n.flags & F_SHARED_KIDS:
            release_block(n.kids.block)
            release_block(n.aux.block)
        elif n.nkids > 2:
            for k in range(n.nkids):
                queue_if_dead(n.kids.many[k])
            free(n.kids.many)
        else:
            for k in range(n.nkids):
                queue_if_dead(n.kids.pair[k])
        extra = n.extra
        n.extra = NULL
        n.nkids = 0
        n.op = OP_LEAF
        n.flags = 0  # inert while free: no F_PY_BACKWARD without its extra
        A.free_slots[A.nfree] = i
        A.nfree += 1
        A.live -= 1
        if extra != NULL:
            Py_DECREF(<object>extra)  # may re-enter decref_node: it queues and returns
    A.releasing = False
    if A.nfree - first_freed >= SORT_MIN_FREED:
        sort_free_run(first_freed)


cdef enum:
    SORT_MIN_FREED = 256  # smaller runs are reused in any order: sorting would cost more than it saves

# Slot k's bit in a bitmap word, a lowest set bit's index (a de Bruijn sequence: portable C,
# no compiler intrinsic), and the bit of the slots grow() hands out last (k % 64 == 63).
cdef uint64_t DEBRUIJN64 = 0x03f79d71b4cb0a89ULL
cdef unsigned char DEBRUIJN_INDEX[64]
cdef int _b
for _b in range(64):
    DEBRUIJN_INDEX[((<uint64_t>1 << _b) * DEBRUIJN64) >> 58] = <unsigned char>_b
cdef uint64_t SKEW_BIT = <uint64_t>1 << 63


cdef void sort_free_run(int32_t lo) noexcept:
    """Reorder the free stack from entry lo up so that those slots are taken in address order,
    lowest first, with each 64th slot (k % 64 == 63) after all the others, as grow() hands out
    new slots. A training step frees its graph in one run and the next step builds the same
    graph from it: taken in the order they were freed (last freed, first taken), an array's
    nodes would be scattered over the run, and every kernel and backward over it would miss
    the cache (about 20% of the MLP benchmark). A bitmap sort: O(run + span / 64), skipped when
    the run is too sparse for that to pay or the bitmap cannot be allocated (the order is only
    a matter of speed). (If Python code run by the release grew the arena, the run also holds
    the new slots grow() pushed: they are free too, and sorted into the same order.)"""
    cdef int32_t* stack = A.free_slots
    cdef int32_t hi = A.nfree, k, slot, lowest = INT32_MAX, highest = 0
    for k in range(lo, hi):
        slot = stack[k]
        if slot < lowest:
            lowest = slot
        if slot > highest:
            highest = slot
    cdef Py_ssize_t base = lowest // 64, words = highest // 64 - base + 1, w
    if words > hi - lo:  # fewer than one freed slot per word: the scan would cost more than the run
        return
    cdef uint64_t* bits
    if words > A.free_bits_words:
        bits = <uint64_t*>realloc(A.free_bits, <size_t>words * sizeof(uint64_t))
        if bits == NULL:
            return
        memset(bits + A.free_bits_words, 0, <size_t>(words - A.free_bits_words) * sizeof(uint64_t))
        A.free_bits = bits
        A.free_bits_words = words
    bits = A.free_bits
    # A run is freed mostly in address order: collect a word's bits in a register while the
    # slots stay in it (an |= into memory per slot waited for the previous one's store)
    cdef Py_ssize_t word_at = -1, at
    cdef uint64_t collected = 0
    for k in range(lo, hi):
        slot = stack[k]
        at = <uint32_t>slot // 64 - base
        if at != word_at:
            if word_at >= 0:
                bits[word_at] |= collected
            word_at = at
            collected = 0
        collected |= <uint64_t>1 << (<uint32_t>slot % 64)
    if word_at >= 0:
        bits[word_at] |= collected
    # Fill the run from its top (taken first) down: the other slots ascending, then the 64th ones.
    cdef int32_t top = hi - 1
    cdef uint64_t word, low
    for w in range(words):
        word = bits[w] & ~SKEW_BIT
        while word:
            low = word & (~word + 1)
            stack[top] = <int32_t>((base + w) * 64 + DEBRUIJN_INDEX[(low * DEBRUIJN64) >> 58])
            top -= 1
            word ^= low
    for w in range(words):
        if bits[w] & SKEW_BIT:
            stack[top] = <int32_t>((base + w) * 64 + 63)
            top -= 1
        bits[w] = 0


# Every operation makes a handle and, usually, drops one: the engine recycles handles itself.
# Its tp_dealloc (for the exact Value type; subclasses keep Cython's) releases the node and keeps
# the object on a free list, skipping what Cython's generic slots do for any object (GC tracking
# on every allocation, saving the error state around __dealloc__): about 10% of an operation.
cdef enum:
    HANDLE_FREELIST_SIZE = 512
cdef PyObject* handle_freelist[HANDLE_FREELIST_SIZE]
cdef int handle_free_count = 0
cdef destructor cython_value_dealloc = NULL  # Cython's generated tp_dealloc


cdef inline Value alloc_handle():
    """A new handle object, untracked by the GC, with _i == 0."""
    global handle_free_count
    cdef object o
    if handle_free_count > 0:
        handle_free_count -= 1
        o = <object>PyObject_Init(handle_freelist[handle_free_count], <PyTypeObject*>Value)
        Py_DECREF(o)  # <object> took a second reference to the one PyObject_Init set up
        return <Value>o
    o = Value.__new__(Value)
    PyObject_GC_UnTrack(<void*>o)  # see track_if_needed
    return <Value>o


cdef void handle_dealloc(PyObject* o) noexcept:
    global handle_free_count
    # Detach from the node first: a weakref callback may ask the node for its handle again, and
    # must then get a new one, not this dying object.
    cdef int32_t i = (<Value>o)._i
    if i > 0:
        (<Value>o)._i = 0
        A.nodes[i].handle = NULL
    if o.ob_type != <PyTypeObject*>Value:  # a subclass: Cython's dealloc (its __dealloc__ finds _i == 0)
        cython_value_dealloc(o)
        if i > 0:
            decref_node(i)
        return
    if PyObject_GC_IsTracked(<object>o):
        PyObject_GC_UnTrack(<void*>o)
    if (<PyObject**>(<char*>o + (<TypeSlots*>o.ob_type).tp_weaklistoffset))[0] != NULL:
        PyObject_ClearWeakRefs(o)
    if i > 0:
        decref_node(i)
    if handle_free_count < HANDLE_FREELIST_SIZE:
        handle_freelist[handle_free_count] = o
        handle_free_count += 1
    else:
        cython_value_dealloc(o)  # frees it (its __dealloc__ finds _i == 0)


cdef inline Value new_handle(int32_t i):
    """A handle for node i, which has none (a new node's handle, or one recreated for _prev)."""
    cdef Value v
    # Allocating the handle may run the GC, and with it Python code (a finalizer) that drops
    # the node's other owners (re-points an array's slot): the count taken now holds the node,
    # and becomes the handle's.
    incref_node(i)
    try:
        v = alloc_handle()
    except BaseException:  # out of memory: a new node with no owner must not linger
        decref_node(i)
        raise
    cdef Node* n = &A.nodes[i]
    if n.handle != NULL:  # that Python code asked for this node's handle: there is one now
        decref_node(i)  # (the node keeps the other handle's count; v, unlinked, is dropped)
        return <Value>n.handle
    v._i = i
    n.handle = <PyObject*>v
    if n.extra != NULL:
        track_if_needed(v)
    return v


cdef inline void track_if_needed(Value v) noexcept:
    """Handles are left out of the cyclic GC (it would only slow every allocation down) until
    their node holds a Python callable or attributes, which can form a cycle back to them."""
    cdef NodeExtra e
    if A.nodes[v._i].extra == NULL or PyObject_GC_IsTracked(v):
        return
    e = <NodeExtra>A.nodes[v._i].extra
    if e.backward is not None or e.attrs is not None:
        PyObject_GC_Track(<void*>v)


cdef Value handle_of(int32_t i):
    """The live handle of node i (the same object every time while it lives)."""
    cdef PyObject* h = A.nodes[i].handle
    if h != NULL:
        return <Value>h
    return new_handle(i)


cdef NodeExtra extra_of(int32_t i):
    """The node's NodeExtra, made on first use."""
    cdef Node* n = &A.nodes[i]
    if n.extra == NULL:
        e = NodeExtra()
        n = &A.nodes[i]  # NodeExtra() may have run the GC: Python code that moved the arena,
        if n.extra == NULL:  # or gave the node an extra (keep that one: it may hold a _backward)
            Py_INCREF(e)
            n.extra = <PyObject*>e
    return <NodeExtra>n.extra


# =============================================================================== numbers

cdef inline bint fits_int(double x) noexcept nogil:
    return -EXACT_INT_LIMIT < x < EXACT_INT_LIMIT


cdef int int_as_number(object x, double* out, bint* is_int) except -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(x, &overflow)
    if overflow == 0 and -9007199254740992 < v < 9007199254740992:
        out[0] = <double>v
        is_int[0] = True
    else:
        out[0] = PyLong_AsDouble(x)  # OverflowError when too large for a float
        is_int[0] = False
    return 1


cdef int as_number(object x, double* out, bint* is_int) except -1:
    """1 and the number in out/is_int if x is a real number (int, float, numpy scalar, ...);
    0 if it is not one (the caller returns NotImplemented or raises TypeError)."""
    if type(x) is float:
        out[0] = PyFloat_AS_DOUBLE(x)
        is_int[0] = False
        return 1
    if type(x) is int:
        return int_as_number(x, out, is_int)
    if isinstance(x, float):  # float subclasses: numpy.float64
        out[0] = PyFloat_AS_DOUBLE(x)
        is_int[0] = False
        return 1
    if x is None or isinstance(x, (str, bytes, bytearray, complex, Value)):
        return 0
    if PyIndex_Check(x):  # bool, numpy integers
        try:
            index = operator.index(x)
        except TypeError:
            pass
        else:
            return int_as_number(index, out, is_int)
    if hasattr(type(x), "__float__"):  # numpy.float32, Fraction, Decimal, ...
        try:
            out[0] = float(x)
        except (TypeError, ValueError):
            return 0
        is_int[0] = False
        return 1
    return 0


cdef int require_number(object x, double* out, bint* is_int, str what) except -1:
    if not as_number(x, out, is_int):
        raise TypeError(f"{what} must be a real number, not {type(x).__name__}")
    return 0


cdef inline object number_object(double x, bint is_int):
    if is_int:
        return PyLong_FromLongLong(<long long>x)
    return PyFloat_FromDouble(x)


cdef inline bint is_odd_integer(double x) noexcept nogil:
    return fmod(fabs(x), 2.0) == 1.0


cdef double python_pow(double x, double y, bint* overflow, bint* zero_division, bint* complex_result) noexcept nogil:
    """x ** y exactly as CPython's float.__pow__ computes it, reporting where it would raise
    (the result is then C99's: infinities, or nan for a complex result)."""
    cdef bint negate = False
    cdef double r
    overflow[0] = zero_division[0] = complex_result[0] = False
    if y == 0.0:
        return 1.0
    if isnan(x):
        return x
    if isnan(y):
        return 1.0 if x == 1.0 else y
    if isinf(y):
        x = fabs(x)
        if x == 1.0:
            return 1.0
        return fabs(y) if (y > 0.0) == (x > 1.0) else 0.0
    if isinf(x):
        if y > 0.0:
            return x if is_odd_integer(y) else fabs(x)
        return copysign(0.0, x) if is_odd_integer(y) else 0.0
    if x == 0.0:
        if y < 0.0:
            zero_division[0] = True
            return copysign(INFINITY, x) if is_odd_integer(y) else INFINITY
        return x if is_odd_integer(y) else 0.0
    if x < 0.0:
        if y != floor(y):
            complex_result[0] = True
            return NAN
        x = -x
        negate = is_odd_integer(y)
    if x == 1.0:
        return -1.0 if negate else 1.0
    r = pow(x, y)
    if isinf(r):
        overflow[0] = True
    return -r if negate else r


cdef inline double ieee_pow(double x, double y) noexcept nogil:
    cdef bint o, z, c
    return python_pow(x, y, &o, &z, &c)


cdef inline double pow_grad(double x, double c) noexcept nogil:
    """d(x**c)/dx = c * x**(c-1), micrograd's formula; 0 when c == 0, as in PyTorch."""
    if c == 0.0:
        return 0.0
    return c * ieee_pow(x, c - 1.0)


cdef inline bint pow_grad_is_int(double x, bint x_int, double c, bint c_int, double g) noexcept nogil:
    return x_int and c_int and c >= 1.0 and fits_int(g)


cdef inline double ieee_log(double x) noexcept nogil:
    if x > 0.0:
        return log(x)
    return -INFINITY if x == 0.0 else NAN


cdef inline double sigmoid(double x) noexcept nogil:
    """1 / (1 + e**-x), computed so that neither branch can overflow."""
    cdef double e
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


# ============================================================================== the op table
# Each op is two C functions side by side: its forward (op_forward, linear_value) and its local
# backward (builtin_local_backward). The Python operators and any re-execution of a recorded
# graph go through the same ones.

cdef inline double sum_or_product(bint product, double x, bint xi, double y, bint yi,
                                 bint* ri) noexcept nogil:
    """x + y or x * y: the forward of '+' and '*' (int when both are ints and it fits)."""
    cdef double v = x * y if product else x + y
    ri[0] = xi and yi and fits_int(v)
    return v + 0.0 if ri[0] else v  # an int has no negative zero


cdef inline int op_forward(uint16_t op, double x, bint xi, double y, bint yi,
                           double* r, bint* ri) noexcept nogil:
    """The value of `op` at x (and y: the other operand, or the exponent of '**c'), keeping
    Python's int/float distinction in *ri. Returns FWD_OK, or the error Python would raise.
    The ops made of plain arithmetic are here, small enough to be inlined into the kernels'
    loops (a call per node was ~15% of an array relu); the ones that call libm, and may fail,
    are in libm_forward."""
    if op == OP_ADD or op == OP_MUL:
        r[0] = sum_or_product(op == OP_MUL, x, xi, y, yi, ri)
    elif op == OP_RELU:  # micrograd's `0 if x < 0 else x`: the int 0 below zero
        ri[0] = x < 0.0 or xi
        r[0] = 0.0 if x < 0.0 else x + 0.0 if xi else x  # (an int has no negative zero)
    elif op == OP_ABS:
        ri[0] = xi
        r[0] = fabs(x)
    elif op == OP_LEAKY_RELU and x > 0.0:  # x if x > 0 else slope * x, slope = y ('*' keeps ints)
        ri[0] = xi
        r[0] = x
    elif op == OP_LEAKY_RELU:
        r[0] = sum_or_product(True, y, yi, x, xi, ri)
    else:
        return libm_forward(op, x, xi, y, yi, r, ri)
    return FWD_OK


cdef int libm_forward(uint16_t op, double x, bint xi, double y, bint yi, double* r,
                      bint* ri) noexcept nogil:
    """op_forward for the ops that call libm: the powers, exp, log, tanh, sigmoid, elu."""
    cdef bint overflow, zero_division, complex_result
    cdef double v
    ri[0] = False
    if op == OP_POWC or op == OP_POW or op == OP_STD:
        v = python_pow(x, y, &overflow, &zero_division, &complex_result)
        if zero_division:
            return FWD_ZERO_DIVISION
        if complex_result:
            return FWD_COMPLEX
        if overflow:
            return FWD_OVERFLOW
        ri[0] = xi and yi and y >= 0.0 and fits_int(v)  # int ** non-negative int is an int
    elif op == OP_EXP:
        v = exp(x)
        if isinf(v) and isfinite(x):
            return FWD_OVERFLOW
    elif op == OP_LOG:
        if x <= 0.0:
            return FWD_DOMAIN
        v = log(x)
    elif op == OP_TANH:
        v = tanh(x)
    elif op == OP_SIGMOID:
        v = sigmoid(x)
    elif op == OP_ELU:  # x if x > 0 else alpha * expm1(x), alpha = y (a float)
        if x > 0.0:
            v = x
            ri[0] = xi
        else:
            v = y * expm1(x)
    else:
        v = NAN
    r[0] = v + 0.0 if ri[0] else v  # an int has no negative zero
    return FWD_OK


cdef int raise_forward_error(int error, uint16_t op, double x, bint xi, double y, bint yi) except -1:
    """Raise what Python's own arithmetic raises for this op and these operands."""
    if error == FWD_ZERO_DIVISION:
        raise ZeroDivisionError("0.0 cannot be raised to a negative power")
    if error == FWD_COMPLEX:
        raise ValueError(f"{number_object(x, xi)!r} ** {number_object(y, yi)!r} is a complex "
                         "number; Value supports real numbers only")
    if error == FWD_OVERFLOW and op == OP_EXP:
        raise OverflowError(f"exp({number_object(x, xi)!r}) is too large for a float")
    if error == FWD_OVERFLOW:
        raise OverflowError(f"{number_object(x, xi)!r} ** {number_object(y, yi)!r} is too large "
                            "for a float")
    if error == FWD_DOMAIN:
        raise ValueError(f"log({number_object(x, xi)!r}): math domain error "
                         "(log needs a positive number)")
    raise SystemError(f"michigrad: forward error {error} for op {op}")


cdef inline double linear_value(Node* nodes, int32_t* kids, int32_t* x_kids, int32_t nkids,
                                bint* ri) noexcept nogil:
    """bias + w[0]*x[0] + ... summed left to right (the children of OP_LINEAR: kids holds
    [bias,] w[0..n), x_kids x[0..n); see linear_rows)."""
    cdef int32_t has_bias = nkids & 1, n = nkids >> 1, k
    cdef double acc = 0.0, product
    cdef bint acc_int = True  # without a bias, Python's sum() starts from the int 0
    cdef Node* w
    cdef Node* x
    if has_bias:
        acc = nodes[kids[0]].data
        acc_int = (nodes[kids[0]].flags & F_DATA_INT) != 0
    for k in range(n):
        w = &nodes[kids[has_bias + k]]
        x = &nodes[x_kids[k]]
        product = w.data * x.data
        if w.flags & x.flags & F_DATA_INT and fits_int(product):
            product = product + 0.0
        else:
            acc_int = False
        acc = acc + product
        if acc_int and fits_int(acc):
            acc = acc + 0.0
        else:
            acc_int = False
    ri[0] = acc_int
    return acc


cdef inline int32_t extreme_child(Node* nodes, bint minimum, int32_t* kids, int32_t nkids) noexcept nogil:
    """'max'/'min' forward: the position of the first maximal (minimal) child, or of the first
    NaN (NumPy propagates NaN). nkids >= 1."""
    cdef int32_t best = 0, k
    cdef double top = nodes[kids[0]].data, v
    if isnan(top):
        return 0
    for k in range(1, nkids):
        v = nodes[kids[k]].data
        if isnan(v):
            return k
        if (v < top) if minimum else (v > top):
            best = k
            top = v
    return best


cdef inline double reduce_value(Node* nodes, uint16_t op, int32_t* kids, int32_t nkids,
                                bint* ri) noexcept nogil:
    """'sum': c0 + c1 + ... left to right with '+' semantics (int while all are ints and it
    fits); 'max'/'min': the data and int flag of the chosen child (extreme_child). nkids >= 1."""
    cdef Node* c = &nodes[kids[0]]
    cdef double acc
    cdef bint acc_int
    cdef int32_t k
    if op == OP_SUM:
        acc = c.data
        acc_int = (c.flags & F_DATA_INT) != 0
        for k in range(1, nkids):
            c = &nodes[kids[k]]
            acc = sum_or_product(False, acc, acc_int, c.data, (c.flags & F_DATA_INT) != 0, &acc_int)
        ri[0] = acc_int
        return acc
    c = &nodes[kids[extreme_child(nodes, op == OP_MIN, kids, nkids)]]
    ri[0] = (c.flags & F_DATA_INT) != 0
    return c.data


cdef inline Node* chosen_child(Node* nodes, Node* out) noexcept nogil:
    """'max'/'min' backward: the first child whose data equals out.data (the first NaN when it
    is NaN), from the children's current data; NULL if none does any more."""
    cdef int32_t k
    cdef Node* c
    cdef bint want_nan = isnan(out.data)
    for k in range(out.nkids):
        c = &nodes[kid(out, k)]
        if (isnan(c.data) if want_nan else c.data == out.data):
            return c
    return NULL


cdef inline void node_operands(Node* nodes, Node* n, double* x, bint* xi, double* y,
                               bint* yi) noexcept nogil:
    """The operands op_forward takes for a two-child or unary node: the first child's data, and
    the second child's data or the op constant (the exponent of '**c')."""
    cdef Node* operand = &nodes[n.kids.pair[0]]
    x[0] = operand.data
    xi[0] = (operand.flags & F_DATA_INT) != 0
    y[0] = n.aux.c
    yi[0] = (n.flags & F_AUX_INT) != 0
    if n.nkids == 2:
        operand = &nodes[n.kids.pair[1]]
        y[0] = operand.data
        yi[0] = (operand.flags & F_DATA_INT) != 0


cdef inline int node_forward(Node* nodes, int32_t i) noexcept nogil:
    """Recompute node i's data and int flag from its children's current data: the forward pass
    of a replayed graph, through the same op table as the Python operators, so the result is the
    same bits as a fresh build. Leaves and Python-defined ops are left alone. Returns FWD_OK, or
    the error Python would raise (see raise_node_forward_error), leaving the node unchanged."""
    cdef Node* n = &nodes[i]
    cdef uint16_t op = n.op
    cdef int32_t* w_kids
    cdef int32_t* x_kids
    cdef double x, y, r
    cdef bint xi, yi, ri
    cdef int error
    if op == OP_LEAF or op == OP_PYTHON:
        return FWD_OK
    if op == OP_LINEAR:
        w_kids = linear_rows(n, &x_kids)
        r = linear_value(nodes, w_kids, x_kids, n.nkids, &ri)
    elif op == OP_SUM or op == OP_MAX or op == OP_MIN:
        r = reduce_value(nodes, op, n.kids.many if n.nkids > 2 else n.kids.pair, n.nkids, &ri)
    else:
        node_operands(nodes, n, &x, &xi, &y, &yi)
        error = op_forward(op, x, xi, y, yi, &r, &ri)
        if error:
            return error
    n.data = r
    n.flags = (n.flags & ~F_DATA_INT) | (F_DATA_INT if ri else 0)
    return FWD_OK


cdef int raise_node_forward_error(Node* nodes, int32_t i, int error) except -1:
    """Raise the Python error for node_forward's `error` at node i."""
    cdef double x, y
    cdef bint xi, yi
    node_operands(nodes, &nodes[i], &x, &xi, &y, &yi)
    return raise_forward_error(error, nodes[i].op, x, xi, y, yi)


cdef inline void accumulate(Node* n, double contrib, bint contrib_int) noexcept nogil:
    """n.grad += contrib, keeping Python's int/float distinction."""
    if contrib_int and (n.flags & F_GRAD_INT):
        n.grad = (n.grad + (contrib + 0.0)) + 0.0
        if not fits_int(n.grad):
            n.flags &= ~F_GRAD_INT
    else:
        if contrib_int:
            contrib = contrib + 0.0  # an int contribution has no negative zero
        n.grad = n.grad + contrib
        if n.flags & F_GRAD_INT:  # a store per update to an already clear flag: 7% of an MLP backward
            n.flags &= ~F_GRAD_INT


cdef inline void builtin_local_backward(Node* nodes, int32_t i) noexcept nogil:
    """Add node i's contribution to its children's gradients: the local derivative of each op,
    in the same IEEE operations and order as _reference.py."""
    cdef Node* out = &nodes[i]
    cdef double g = out.grad
    cdef bint gi = (out.flags & F_GRAD_INT) != 0
    cdef Node* a
    cdef Node* b
    cdef double x, c, contrib
    cdef bint xi, ci
    cdef int32_t k
    cdef uint16_t op = out.op
    if op == OP_LEAF or op == OP_PYTHON:
        return
    if OP_LINEAR <= op <= OP_MIN:  # one test on the hot path for every op with n children
        if op == OP_LINEAR:
            linear_local_backward(nodes, out, g, gi)
        elif op == OP_SUM:  # every child, duplicates each time, as '+' does
            for k in range(out.nkids):
                accumulate(&nodes[kid(out, k)], g, gi)
        else:  # max, min: only the chosen child
            a = chosen_child(nodes, out)
            if a != NULL:
                accumulate(a, g, gi)
        return
    a = &nodes[out.kids.pair[0]]  # the ops below have one or two children
    if op == OP_ADD:
        b = &nodes[out.kids.pair[1]]
        accumulate(a, g, gi)
        accumulate(b, g, gi)
    elif op == OP_MUL:
        b = &nodes[out.kids.pair[1]]
        contrib = b.data * g
        accumulate(a, contrib, gi and (b.flags & F_DATA_INT) and fits_int(contrib))
        contrib = a.data * g
        accumulate(b, contrib, gi and (a.flags & F_DATA_INT) and fits_int(contrib))
    elif op == OP_POWC or op == OP_POW:
        x = a.data
        xi = (a.flags & F_DATA_INT) != 0
        if op == OP_POWC:
            c = out.aux.c
            ci = (out.flags & F_AUX_INT) != 0
        else:
            b = &nodes[out.kids.pair[1]]
            c = b.data
            ci = (b.flags & F_DATA_INT) != 0
        contrib = pow_grad(x, c)
        if pow_grad_is_int(x, xi, c, ci, contrib):
            contrib = contrib * g
            accumulate(a, contrib, gi and fits_int(contrib))
        else:
            accumulate(a, contrib * g, False)
        if op == OP_POW:  # the exponent's gradient: x**y * log(x), 0 where x == 0
            b = &nodes[out.kids.pair[1]]
            contrib = 0.0 if x == 0.0 else out.data * ieee_log(x)
            accumulate(b, contrib * g, False)
    elif op == OP_STD:  # '**0.5''s float contribution, but none where the root is 0
        accumulate(a, 0.0 if out.data == 0.0 else pow_grad(a.data, out.aux.c) * g, False)
    elif op == OP_EXP:
        accumulate(a, out.data * g, False)
    elif op == OP_LOG:
        accumulate(a, (1.0 / a.data) * g, False)
    elif op == OP_TANH:
        accumulate(a, (1.0 - out.data * out.data) * g, False)
    elif op == OP_RELU:
        accumulate(a, <double>(out.data > 0.0) * g, gi)
    elif op == OP_SIGMOID:
        accumulate(a, (out.data * (1.0 - out.data)) * g, False)
    elif op == OP_ABS:
        x = a.data
        accumulate(a, <double>((x > 0.0) - (x < 0.0)) * g, gi)
    elif op == OP_LEAKY_RELU:  # (1 if x > 0 else slope) * g
        if a.data > 0.0:
            accumulate(a, g, gi)
        else:
            contrib = out.aux.c * g
            accumulate(a, contrib, gi and (out.flags & F_AUX_INT) and fits_int(contrib))
    elif op == OP_ELU:  # g if x > 0 else (alpha * exp(x)) * g
        x = a.data
        if x > 0.0:
            accumulate(a, g, gi)
        else:
            accumulate(a, (out.aux.c * exp(x)) * g, False)


cdef inline void linear_local_backward(Node* nodes, Node* out, double g, bint gi) noexcept nogil:
    """bias.grad += g, then for each i: w[i].grad += x[i].data * g; x[i].grad += w[i].data * g."""
    cdef int32_t has_bias = out.nkids & 1, n = out.nkids >> 1, k
    cdef int32_t* x_kids
    cdef int32_t* w_kids = linear_rows(out, &x_kids)
    cdef Node* w
    cdef Node* x
    cdef double contrib
    if has_bias:
        accumulate(&nodes[w_kids[0]], g, gi)
    for k in range(n):
        w = &nodes[w_kids[has_bias + k]]
        x = &nodes[x_kids[k]]
        contrib = x.data * g
        accumulate(w, contrib, gi and (x.flags & F_DATA_INT) and fits_int(contrib))
        contrib = w.data * g
        accumulate(x, contrib, gi and (w.flags & F_DATA_INT) and fits_int(contrib))


cdef int apply_local_backward(int32_t i) except -1:
    """Run node i's local backward: the op table's, or the Python callable set as _backward."""
    cdef Node* n = &A.nodes[i]
    if n.flags & F_PY_BACKWARD:
        (<NodeExtra>n.extra).backward()
    else:
        builtin_local_backward(A.nodes, i)
    return 0


ctypedef struct Frame:
    int32_t node
    int32_t next_kid


cdef void clear_marks() noexcept:
    """Set every live node's and shared block's mark to 0, older than any epoch (a free slot has
    a zero count, as has a dying one, and new_node clears its mark)."""
    cdef int32_t k
    cdef Node* n
    for k in range(A.capacity):
        n = &A.nodes[k]
        if n.refcnt > 0:
            n.mark = 0
            if n.flags & F_SHARED_KIDS:
                n.kids.block.mark = 0
                n.aux.block.mark = 0


cdef inline uint32_t next_epoch() noexcept:
    """A fresh visit mark; on wrap-around every mark is cleared and the count restarts at 1."""
    A.epoch += 1
    if A.epoch == 0:
        clear_marks()
        A.epoch = 1
    return A.epoch


cdef int grow_buffer(void** buffer, Py_ssize_t* capacity, size_t item) except -1:
    cdef Py_ssize_t new_capacity = capacity[0] * 2 if capacity[0] else 4096
    cdef void* p = realloc(buffer[0], <size_t>new_capacity * item)
    if p == NULL:
        raise MemoryError("michigrad: out of memory while ordering the graph for backward()")
    buffer[0] = p
    capacity[0] = new_capacity
    return 0


cdef Py_ssize_t topological_order(int32_t root, int32_t** order_out, bint* has_python) except -1:
    """The nodes whose local backward does something, children before parents, depth first in
    child order (micrograd's build_topo, with an explicit stack). Plain leaves are visited but
    left out: their backward is a no-op. Returns the count; *order_out is a malloc'd array the
    caller frees."""
    cdef uint32_t epoch = next_epoch()
    cdef Frame* stack = NULL
    cdef int32_t* order = NULL
    cdef Py_ssize_t sp = 0, stack_cap = 0, count = 0, order_cap = 0
    cdef Node* nodes = A.nodes
    cdef Node* n
    cdef Node* cn
    cdef Frame* f
    cdef int32_t c, k, nkids
    cdef KidBlock* block
    cdef bint descend
    has_python[0] = False
    try:
        grow_buffer(<void**>&stack, &stack_cap, sizeof(Frame))
        grow_buffer(<void**>&order, &order_cap, sizeof(int32_t))
        nodes[root].mark = epoch
        stack[0].node = root
        stack[0].next_kid = 0
        sp = 1
        while sp > 0:
            f = &stack[sp - 1]
            n = &nodes[f.node]
            k = f.next_kid
            nkids = n.nkids
            descend = False
            while k < nkids:  # find the next unvisited child that has children of its own
                if n.flags & F_SHARED_KIDS and (k == 0 or k == n.kids.block.n):
                    block = n.kids.block if k == 0 else n.aux.block
                    if block.mark == epoch:  # scanned before: every child of it is marked
                        k += block.n
                        continue
                    # (a block cannot be met again while its scan is suspended: the node
                    # meeting it would be a descendant of one of its children, and its parent)
                    block.mark = epoch
                c = kid(n, k)
                k += 1
                cn = &nodes[c]
                if cn.mark == epoch:
                    continue
                cn.mark = epoch
                if cn.nkids == 0 and not (cn.flags & F_PY_BACKWARD):
                    continue
                descend = True
                break
            if descend:
                f.next_kid = k
                if sp == stack_cap:
                    grow_buffer(<void**>&stack, &stack_cap, sizeof(Frame))
                stack[sp].node = c
                stack[sp].next_kid = 0
                sp += 1
            else:
                if count == order_cap:
                    grow_buffer(<void**>&order, &order_cap, sizeof(int32_t))
                order[count] = f.node
                count += 1
                if n.flags & F_PY_BACKWARD:
                    has_python[0] = True
                sp -= 1
    except BaseException:
        free(order)
        raise
    finally:
        free(stack)
    order_out[0] = order
    return count


ctypedef struct SavedGrad:
    int32_t node
    uint16_t flags
    double grad


cdef Py_ssize_t save_grads(int32_t* order, Py_ssize_t count, SavedGrad** out) except -1:
    """Every gradient backward() may change: the ordered nodes and their children."""
    cdef Py_ssize_t total = count, k, m = 0
    cdef int32_t j, c
    for k in range(count):
        total += A.nodes[order[k]].nkids
    cdef SavedGrad* saved = <SavedGrad*>malloc(<size_t>total * sizeof(SavedGrad))
    if saved == NULL:
        raise MemoryError("michigrad: out of memory in backward()")
    for k in range(count):
        for j in range(-1, A.nodes[order[k]].nkids):
            c = order[k] if j < 0 else kid(&A.nodes[order[k]], j)
            saved[m].node = c
            saved[m].grad = A.nodes[c].grad
            saved[m].flags = A.nodes[c].flags
            m += 1
    out[0] = saved
    return m


cdef int run_backward(int32_t root) except -1:
    """micrograd's backward(): root.grad = 1, then every node's local backward in reverse
    topological order. Nothing is zeroed. If a Python-defined _backward raises, every gradient in
    the graph is restored before the exception propagates."""
    cdef int32_t* order = NULL
    cdef bint has_python
    cdef Py_ssize_t count = topological_order(root, &order, &has_python)
    cdef Py_ssize_t k, nsaved = 0
    cdef SavedGrad* saved = NULL
    cdef Node* n
    try:
        if has_python:  # Python code can fail midway: keep what we need to undo
            nsaved = save_grads(order, count, &saved)
        A.nodes[root].grad = 1.0
        A.nodes[root].flags |= F_GRAD_INT
        if not has_python:
            # The GIL stays held: another thread running Python could grow the arena (moving
            # `nodes`) or free this graph under the loop. The engine relies on the GIL.
            backward_sweep(A.nodes, order, count)
        else:
            # The Python code may drop the root's other owners (re-point the array slot it was
            # read from): hold it, and so the whole ordered graph, until the sweep is done.
            incref_node(root)
            try:
                for k in range(count - 1, -1, -1):
                    apply_local_backward(order[k])  # re-reads A.nodes: Python may grow the arena
            except BaseException:
                for k in range(nsaved - 1, -1, -1):
                    n = &A.nodes[saved[k].node]
                    n.grad = saved[k].grad
                    n.flags = (n.flags & ~F_GRAD_INT) | (saved[k].flags & F_GRAD_INT)
                raise
            finally:
                decref_node(root)  # (may free the graph now, and run its closures' cleanup)
    finally:
        free(order)
        free(saved)
    return 0


# =============================================================================== Value

cdef class NodeExtra:
    """What a node holds for Python (name, label, Python backward, a dead handle's attributes).
    Only nodes that need one have it."""

    def __cinit__(self):
        self.name = ""
        self.label = ""


cdef dict attrs_of(Value v):
    """The node's extra attributes, made on first use."""
    cdef NodeExtra extra = extra_of(index_of(v))
    cdef dict attrs
    if extra.attrs is None:
        attrs = {}  # (may run the GC: Python code that gave the node attributes meanwhile)
        if extra.attrs is None:
            extra.attrs = attrs
            track_if_needed(v)
    return extra.attrs


cdef inline int32_t index_of(Value v) except -1:
    if v._i <= 0:  # slot 0 is never a node: a handle not made by __init__ or by the engine
        raise TypeError("this Value was created without Value.__init__")
    return v._i


cdef inline int32_t operand_node(object other, bint* ok) except -2:
    """The node of a Value operand, or a new constant leaf for a number (ok=False when other is
    neither: the operator then returns NotImplemented). The caller has reserved two slots."""
    cdef double x
    cdef bint x_int
    if isinstance(other, Value):
        ok[0] = True
        return index_of(<Value>other)
    if not as_number(other, &x, &x_int):
        ok[0] = False
        return -1
    ok[0] = True
    return new_node(x, F_DATA_INT if x_int else 0, OP_LEAF, -1, -1)


cdef inline uint16_t int_flag(bint is_int) noexcept nogil:
    return F_DATA_INT if is_int else 0


cdef object make_op(uint16_t op, int32_t i, int32_t j, double c, bint c_int):
    """Node `op` over node i and node j (-1 for a unary op; for '**c' the exponent is c).
    Every Python operator ends here; the caller has reserved a slot."""
    cdef Node* a = &A.nodes[i]
    cdef double x = a.data, y = c, r
    cdef bint xi = (a.flags & F_DATA_INT) != 0, yi = c_int, ri
    if j >= 0:
        y = A.nodes[j].data
        yi = (A.nodes[j].flags & F_DATA_INT) != 0
    cdef int error = op_forward(op, x, xi, y, yi, &r, &ri)
    if error:
        raise_forward_error(error, op, x, xi, y, yi)
    cdef int32_t k = new_node(r, int_flag(ri), op, i, j)
    if op == OP_POWC:
        A.nodes[k].aux.c = c
        if c_int:
            A.nodes[k].flags |= F_AUX_INT
    return new_handle(k)


cdef object unary(Value self, uint16_t op):
    cdef int32_t i = index_of(self)
    reserve(1)
    return make_op(op, i, -1, 0.0, False)


cdef object add_or_multiply(Value self, object other, bint product):
    """self + other or self * other (a number becomes a constant leaf, as in micrograd). The
    hottest path of the engine: it cannot fail once the slots are reserved."""
    cdef bint ok, ri
    cdef int32_t i = index_of(self)
    reserve(2)
    cdef int32_t j = operand_node(other, &ok)
    if not ok:
        return NotImplemented
    cdef Node* a = &A.nodes[i]
    cdef Node* b = &A.nodes[j]
    cdef double r = sum_or_product(product, a.data, (a.flags & F_DATA_INT) != 0,
                                   b.data, (b.flags & F_DATA_INT) != 0, &ri)
    return new_handle(new_node(r, int_flag(ri), OP_MUL if product else OP_ADD, i, j))


cdef object power(Value self, object exponent):
    """self ** exponent for a number exponent: node '**c' with c kept in aux."""
    cdef double c
    cdef bint c_int
    cdef int32_t i = index_of(self)
    if not as_number(exponent, &c, &c_int):
        return NotImplemented
    reserve(1)
    return make_op(OP_POWC, i, -1, c, c_int)


cdef double number_pow(double x, bint xi, double y, bint yi) except? -1.0:
    """x ** y for two numbers, with Python's errors (micrograd's `self * other**-1`)."""
    cdef double r
    cdef bint ri
    cdef int error = op_forward(OP_POWC, x, xi, y, yi, &r, &ri)
    if error:
        raise_forward_error(error, OP_POWC, x, xi, y, yi)
    return r


cdef object negated(object x):
    """-x for a number operand (as micrograd's `self + (-other)`), None if x is not one."""
    cdef double v
    cdef bint v_int
    if not as_number(x, &v, &v_int):
        return None
    return number_object(-v, v_int)


cdef object OP_LABELS = {
    OP_LEAF: "", OP_ADD: "+", OP_MUL: "*", OP_POW: "**", OP_EXP: "exp", OP_LOG: "log",
    OP_TANH: "tanh", OP_RELU: "ReLU", OP_SIGMOID: "sigmoid", OP_ABS: "abs", OP_PYTHON: "",
    OP_LINEAR: "linear", OP_SUM: "sum", OP_MAX: "max", OP_MIN: "min",
    OP_LEAKY_RELU: "leaky_relu", OP_ELU: "elu", OP_STD: "std",
}


def linear(weights, inputs, bias=None):
    """bias + w[0]*x[0] + w[1]*x[1] + ... as one node (label 'linear'), summed left to right as
    micrograd's Neuron does (`sum((wi*xi for wi, xi in zip(w, x)), b)`), so the value is the
    same to the last bit; without a bias the sum starts from the int 0, like Python's sum().
    Weights and bias are Values; inputs are Values or numbers."""
    cdef list ws = list(weights)
    cdef list xs = list(inputs)
    cdef Py_ssize_t n = len(ws), k, m = 0
    cdef double number, acc
    cdef bint number_int, acc_int
    cdef bint has_bias = bias is not None
    if len(xs) != n:
        raise ValueError(f"linear: {n} weights but {len(xs)} inputs")
    if has_bias:
        if not isinstance(bias, Value):
            raise TypeError(f"linear: bias must be a Value or None, not {type(bias).__name__}")
        index_of(<Value>bias)
    for k in range(n):  # check and convert everything before creating any node
        if not isinstance(ws[k], Value):
            raise TypeError(f"linear: weights must be Values, not {type(ws[k]).__name__}")
        index_of(<Value>ws[k])
        if isinstance(xs[k], Value):
            index_of(<Value>xs[k])
        elif as_number(xs[k], &number, &number_int):
            xs[k] = number_object(number, number_int)  # converted once: the next pass cannot fail
        else:
            raise TypeError(f"linear: inputs must be Values or numbers, not {type(xs[k]).__name__}")
    if 2 * n + 1 > INT32_MAX:
        raise MemoryError("linear: too many inputs")
    cdef int32_t nkids = <int32_t>(2 * n + has_bias)
    cdef int32_t* many = NULL
    if nkids > 2:
        many = <int32_t*>malloc(<size_t>nkids * sizeof(int32_t))
        if many == NULL:
            raise MemoryError()
    cdef int32_t pair[2]
    cdef int32_t* kids = many if many != NULL else pair
    try:
        reserve(<int32_t>(n + 1))
    except BaseException:
        free(many)
        raise
    if has_bias:
        kids[m] = (<Value>bias)._i
        m += 1
    for k in range(n):
        kids[m + k] = (<Value>ws[k])._i
    m += n
    for k in range(n):  # numbers become constant leaves, as micrograd's `wi*xi` makes them
        if isinstance(xs[k], Value):
            kids[m + k] = (<Value>xs[k])._i
        else:
            as_number(xs[k], &number, &number_int)
            kids[m + k] = new_node(number, int_flag(number_int), OP_LEAF, -1, -1)
    acc = linear_value(A.nodes, kids, kids + has_bias + n, nkids, &acc_int)
    cdef int32_t i = new_node(acc, int_flag(acc_int), OP_LINEAR, -1, -1)
    cdef Node* out = &A.nodes[i]
    out.nkids = nkids
    if many != NULL:
        out.kids.many = many
    else:
        out.kids.pair[0] = pair[0] if nkids > 0 else -1
        out.kids.pair[1] = pair[1] if nkids > 1 else -1
    for k in range(nkids):
        A.nodes[kids[k]].refcnt += 1
    return new_handle(i)


@cython.auto_pickle(False)
cdef class Value:
    """Value(data, _children=(), _op='', name='', *, label=None)
--

stores a single scalar value and its gradient"""

    # numpy scalars on the left (`np.float64(2) * v`) defer to our reflected operators
    __array_ufunc__ = None

    def __init__(self, data, _children=(), str _op not None="", str name not None="", *, label=None):
        cdef double x
        cdef bint x_int
        if self._i > 0:
            raise TypeError("Value.__init__ cannot re-initialise an existing Value")
        require_number(data, &x, &x_int, "Value data")
        name = _name_or_label(name, label)
        children = []
        seen = set()  # of ids: each child once, in the order given (linear, not quadratic)
        for child in _children:
            if not isinstance(child, Value):
                raise TypeError(f"Value children must be Values, not {type(child).__name__}")
            index_of(<Value>child)
            if id(child) not in seen:
                seen.add(id(child))
                children.append(child)
        cdef Py_ssize_t nkids = len(children), k
        cdef int32_t* many = NULL
        if nkids > 2:
            many = <int32_t*>malloc(<size_t>nkids * sizeof(int32_t))
            if many == NULL:
                raise MemoryError()
        try:
            reserve(1)
            extra = NodeExtra() if (_op or name) else None
        except BaseException:
            free(many)
            raise
        cdef int32_t i = new_node(x, int_flag(x_int), OP_PYTHON if nkids else OP_LEAF,
                                  (<Value>children[0])._i if 0 < nkids <= 2 else -1,
                                  (<Value>children[1])._i if nkids == 2 else -1)
        cdef Node* n = &A.nodes[i]
        if many != NULL:
            for k in range(nkids):
                many[k] = (<Value>children[k])._i
                A.nodes[many[k]].refcnt += 1
            n.kids.many = many
            n.nkids = <int32_t>nkids
        if extra is not None:
            (<NodeExtra>extra).name = name
            (<NodeExtra>extra).label = _op
            if _op:
                n.flags |= F_LABEL
            Py_INCREF(extra)
            n.extra = <PyObject*>extra
        self._i = i
        n.handle = <PyObject*>self
        n.refcnt += 1
        if type(self) is Value:  # a subclass instance has a __dict__: the GC must see it
            PyObject_GC_UnTrack(<void*>self)  # see track_if_needed

    def __dealloc__(self):
        cdef int32_t i = self._i
        if i <= 0:
            return
        self._i = 0
        A.nodes[i].handle = NULL
        decref_node(i)

    # --- extra attributes (optimiser state such as p.m, p.v): kept with the node, so they
    # survive the handle and come back with the same object through _prev

    def __getattr__(self, name):
        cdef Node* n = &A.nodes[index_of(self)]
        if n.extra != NULL and (<NodeExtra>n.extra).attrs is not None:
            try:
                return (<NodeExtra>n.extra).attrs[name]
            except KeyError:
                pass
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        try:
            generic_setattr(<PyObject*>self, <PyObject*>name, <PyObject*>value)  # data, grad, ...
        except AttributeError:
            if not isinstance(name, str) or hasattr(type(self), name):
                raise
            attrs_of(self)[name] = value

    def __delattr__(self, name):
        cdef Node* n = &A.nodes[index_of(self)]
        if n.extra != NULL and (<NodeExtra>n.extra).attrs and name in (<NodeExtra>n.extra).attrs:
            del (<NodeExtra>n.extra).attrs[name]
            return
        if isinstance(name, str) and hasattr(type(self), name):  # data, grad, a method, ...
            raise AttributeError(f"'Value' object attribute '{name}' cannot be deleted")
        generic_setattr(<PyObject*>self, <PyObject*>name, NULL)  # no such attribute: raises

    @property
    def __dict__(self):
        """The extra attributes of this node (created on first use)."""
        return attrs_of(self)

    # --- data, grad, name ---------------------------------------------------------------

    @property
    def data(self):
        cdef Node* n = &A.nodes[index_of(self)]
        return number_object(n.data, n.flags & F_DATA_INT)

    @data.setter
    def data(self, value):
        cdef double x
        cdef bint x_int
        cdef int32_t i = index_of(self)
        require_number(value, &x, &x_int, "Value data")
        A.nodes[i].data = x
        A.nodes[i].flags = (A.nodes[i].flags & ~F_DATA_INT) | int_flag(x_int)

    @property
    def grad(self):
        cdef Node* n = &A.nodes[index_of(self)]
        return number_object(n.grad, n.flags & F_GRAD_INT)

    @grad.setter
    def grad(self, value):
        cdef double x
        cdef bint x_int
        cdef int32_t i = index_of(self)
        require_number(value, &x, &x_int, "Value grad")
        A.nodes[i].grad = x
        A.nodes[i].flags = (A.nodes[i].flags & ~F_GRAD_INT) | (F_GRAD_INT if x_int else 0)

    @property
    def name(self):
        cdef Node* n = &A.nodes[index_of(self)]
        return (<NodeExtra>n.extra).name if n.extra != NULL else ""

    @name.setter
    def name(self, value):
        if not isinstance(value, str):
            raise TypeError(f"Value name must be a str, not {type(value).__name__}")
        cdef int32_t i = index_of(self)
        if value or A.nodes[i].extra != NULL:
            extra_of(i).name = value

    @property
    def label(self):
        """Alias of `name` (Karpathy's lecture calls it `label`)."""
        return self.name

    @label.setter
    def label(self, value):
        self.name = value

    @property
    def _op(self):
        cdef Node* n = &A.nodes[index_of(self)]
        if n.flags & F_LABEL:
            return (<NodeExtra>n.extra).label
        if n.op == OP_POWC:
            return f"**{number_object(n.aux.c, n.flags & F_AUX_INT)}"
        return OP_LABELS[n.op]

    @_op.setter
    def _op(self, value):
        if not isinstance(value, str):
            raise TypeError(f"Value _op must be a str, not {type(value).__name__}")
        cdef int32_t i = index_of(self)
        extra_of(i).label = value
        A.nodes[i].flags |= F_LABEL

    @property
    def _prev(self):
        cdef Node* n = &A.nodes[index_of(self)]
        cdef int32_t k, nkids = n.nkids
        children = set()
        for k in range(nkids):
            children.add(handle_of(kid(&A.nodes[self._i], k)))
        return children

    @property
    def _children(self):
        """The inputs in the order they were given, each once (`_prev` is the same as a set)."""
        cdef Node* n = &A.nodes[index_of(self)]
        cdef int32_t k, nkids = n.nkids
        children = {}  # id -> handle: each child once, in order (the handles are kept alive here)
        for k in range(nkids):
            child = handle_of(kid(&A.nodes[self._i], k))
            children.setdefault(id(child), child)
        return tuple(children.values())

    @property
    def _backward(self):
        cdef Node* n = &A.nodes[index_of(self)]
        if n.flags & F_PY_BACKWARD:
            return (<NodeExtra>n.extra).backward
        return self._local_backward

    @_backward.setter
    def _backward(self, fn):
        if not callable(fn):
            raise TypeError(f"_backward must be callable, not {type(fn).__name__}")
        cdef int32_t i = index_of(self)
        extra_of(i).backward = fn
        A.nodes[i].flags |= F_PY_BACKWARD
        global py_backward_sets
        py_backward_sets += 1
        track_if_needed(self)

    def _local_backward(self):
        """This node's local backward from the op table (what `_backward` is for a built-in op)."""
        builtin_local_backward(A.nodes, index_of(self))

    # --- operations -----------------------------------------------------------------------

    def __add__(self, other):
        return add_or_multiply(self, other, False)

    def __radd__(self, other):  # other + self
        return add_or_multiply(self, other, False)

    def __mul__(self, other):
        return add_or_multiply(self, other, True)

    def __rmul__(self, other):  # other * self
        return add_or_multiply(self, other, True)

    def __neg__(self):  # -self
        return self * -1

    def __sub__(self, other):  # self - other
        if not isinstance(other, Value):
            other = negated(other)
            if other is None:
                return NotImplemented
            return self + other
        return self + (-other)

    def __rsub__(self, other):  # other - self
        if negated(other) is None:
            return NotImplemented
        return (-self) + other

    def __truediv__(self, other):  # self / other
        cdef double x
        cdef bint x_int
        if isinstance(other, Value):
            return self * other**-1
        if not as_number(other, &x, &x_int):
            return NotImplemented
        return self * number_pow(x, x_int, -1.0, True)

    def __rtruediv__(self, other):  # other / self
        cdef double x
        cdef bint x_int
        if not as_number(other, &x, &x_int):
            return NotImplemented
        return self**-1 * number_object(x, x_int)

    def __pow__(self, other, modulo=None):
        if modulo is not None:
            return NotImplemented
        if isinstance(other, Value):
            reserve(1)
            return make_op(OP_POW, index_of(self), index_of(<Value>other), 0.0, False)
        return power(self, other)

    def __rpow__(self, other, modulo=None):  # other ** self, micrograd's Value(other) ** self
        cdef double x
        cdef bint x_int
        cdef int32_t i = index_of(self)
        if modulo is not None or not as_number(other, &x, &x_int):
            return NotImplemented
        reserve(2)
        cdef int32_t base = new_node(x, int_flag(x_int), OP_LEAF, -1, -1)
        incref_node(base)  # hold the new constant while the power is made (it may raise)
        try:
            return make_op(OP_POW, base, i, 0.0, False)
        finally:
            decref_node(base)

    def exp(self):
        """e ** self (OverflowError when too large for a float)."""
        return unary(self, OP_EXP)

    def log(self):
        """Natural logarithm (ValueError unless self.data > 0)."""
        return unary(self, OP_LOG)

    def tanh(self):
        """Hyperbolic tangent (math.tanh: stable for any input)."""
        return unary(self, OP_TANH)

    def relu(self):
        """max(0, self), micrograd's: the int 0 below zero."""
        return unary(self, OP_RELU)

    def sigmoid(self):
        """1 / (1 + e ** -self), computed without overflow."""
        return unary(self, OP_SIGMOID)

    def abs(self):
        """|self|; its gradient is sign(self), 0 at 0."""
        return unary(self, OP_ABS)

    def __abs__(self):
        return unary(self, OP_ABS)

    def backward(self):
        """micrograd's backward(): set this node's grad to 1, then add every node's local
        derivative into its children's grads, in reverse topological order. Nothing is zeroed."""
        run_backward(index_of(self))

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad}, name={self.name})"

    def __reduce__(self):
        cdef Node* n = &A.nodes[index_of(self)]
        if n.nkids:
            raise TypeError("only leaf Values can be pickled (an operation's closure cannot be); "
                            "save the leaves' data instead")
        attrs = (<NodeExtra>n.extra).attrs if n.extra != NULL else None
        attrs = {k: v for k, v in (attrs or {}).items() if not k.startswith("_")}
        return (_restore_leaf, (self.data, self.grad, self.name, self._op, attrs or None))


def _restore_leaf(data, grad, name, op, attrs):
    v = Value(data, (), op, name)
    v.grad = grad
    for key, value in (attrs or {}).items():
        setattr(v, key, value)
    return v


def _name_or_label(name, label):
    if label is None:
        return name
    if not isinstance(label, str):
        raise TypeError(f"Value label must be a str, not {type(label).__name__}")
    if name and name != label:
        raise TypeError("give name= or label= (its alias), not both")
    return label


# ===================================================================== the cyclic GC
# A custom op's closure usually captures its own output handle: handle -> node -> extra ->
# closure -> handle. The node's reference to its extra is invisible to the GC, so the handle
# reports it, but only while the handle is the node's sole owner: if a live parent node also
# holds the node, the closure is still needed and must stay reachable (unvisited = external).

cdef int _traverse(Value self, visitproc visit, void* arg) noexcept:
    cdef Node* n
    if self._i > 0:
        n = &A.nodes[self._i]
        if n.extra != NULL and n.refcnt == 1 and n.handle == <PyObject*>self:
            return visit(n.extra, arg)
    return 0


cdef int _clear(Value self) noexcept:
    cdef Node* n
    cdef PyObject* extra
    if self._i > 0:
        n = &A.nodes[self._i]
        if n.extra != NULL and n.refcnt == 1 and n.handle == <PyObject*>self:
            extra = n.extra
            n.extra = NULL
            n.flags &= ~(F_PY_BACKWARD | F_LABEL)
            Py_DECREF(<object>extra)
    return 0


(<PyTypeObject*>Value).tp_traverse = <traverseproc>_traverse
(<PyTypeObject*>Value).tp_clear = <inquiry>_clear
cython_value_dealloc = (<TypeSlots*>Value).tp_dealloc
(<TypeSlots*>Value).tp_dealloc = handle_dealloc


# ====================================================================== debug hooks

def _arena_stats():
    """The arena's counters, for tests and benchmarks."""
    return {
        "capacity": A.capacity,
        "live": A.live - (A.capacity > 0),
        "free": A.capacity - A.live,
        "allocations": A.allocations,
        "reuses": A.reuses,
        "node_bytes": sizeof(Node),
        "shared_blocks": live_blocks,
        "row_copied_outputs": row_copied_outputs,
        "panel_outputs": panel_outputs,
    }


def _next_free_slots(Py_ssize_t count):
    """The slots the next `count` new nodes will take, in that order (at most the free ones;
    grow() adds more after them): for the tests of the free stack's order."""
    if count < 0:
        raise ValueError("count must be >= 0")
    return [A.free_slots[A.nfree - 1 - k] for k in range(min(count, A.nfree))]


def _force_epoch_wrap(int marks_before=0):
    """Make the visit mark wrap around to 1 (clearing every mark first), as it does once in
    2**32 marks, after `marks_before` more fresh marks (0: at the next backward's sort): for the
    tests that no stale mark survives the wrap, wherever in a backward it falls."""
    if marks_before < 0:
        raise ValueError("marks_before must be >= 0")
    clear_marks()  # the epoch may move back: no live mark may equal one of the marks to come
    A.epoch = <uint32_t>(0xFFFFFFFF - <uint32_t>marks_before)


cdef int count_block_users(Node* n, Py_ssize_t k, dict block_users, dict counts) except -1:
    """_arena_check's count for a node with shared children: one user per block, and (the first
    time a block is met) one reference per child of the block."""
    cdef KidBlock* block
    cdef int side
    cdef int32_t j
    if n.op != OP_LINEAR or n.kids.block.n + n.aux.block.n != n.nkids:
        raise AssertionError(f"node {k} has shared children but is not a linear node of "
                             f"{n.nkids} children")
    for side in range(2):
        block = n.kids.block if side == 0 else n.aux.block
        address = <size_t>block
        if address not in block_users:
            block_users[address] = 0
            for j in range(block.n):
                counts[block.kids[j]] = counts.get(block.kids[j], 0) + 1
        block_users[address] += 1
    return 0


def _arena_check():
    """Verify the arena's invariants (the free stack, reference counts, handle links);
    raise AssertionError naming the first one broken. O(capacity): tests only."""
    cdef Py_ssize_t k, j
    cdef int32_t i
    cdef KidBlock* block
    counts = store_references()  # the array kernels' NodeStores (_arrays.pxi)
    block_users = {}  # a shared block's address -> the nodes using it
    if A.nfree != A.capacity - A.live:
        raise AssertionError(f"the free stack holds {A.nfree} slots, expected {A.capacity - A.live}")
    cdef char* on_stack = <char*>calloc(<size_t>(A.capacity if A.capacity > 0 else 1), 1)
    if on_stack == NULL:
        raise MemoryError("_arena_check: out of memory")
    try:
        for k in range(A.nfree):
            i = A.free_slots[k]
            if not 0 < i < A.capacity or A.nodes[i].refcnt != 0 or on_stack[i]:
                raise AssertionError(f"the free stack holds slot {i}: out of range, in use or twice")
            on_stack[i] = 1
    finally:
        free(on_stack)
    for k in range(A.free_bits_words):  # sort_free_run's bitmap is all zero between sorts
        if A.free_bits[k] != 0:
            raise AssertionError(f"word {k} of the free-run bitmap is not zero")
    for k in range(1, A.capacity):
        if A.nodes[k].refcnt == 0:
            continue
        if A.nodes[k].handle != NULL:
            counts[k] = counts.get(k, 0) + 1
            if (<Value>A.nodes[k].handle)._i != k:
                raise AssertionError(f"node {k}'s handle points at node {(<Value>A.nodes[k].handle)._i}")
        if A.nodes[k].flags & F_SHARED_KIDS:  # the blocks hold the references to the children
            count_block_users(&A.nodes[k], k, block_users, counts)
            continue
        for j in range(A.nodes[k].nkids):
            c = kid(&A.nodes[k], <int32_t>j)
            counts[c] = counts.get(c, 0) + 1
    for address, users in block_users.items():
        block = <KidBlock*><size_t>address
        if block.refcnt != users:
            raise AssertionError(f"a shared block of children counts {block.refcnt} users, has {users}")
    if len(block_users) != live_blocks:  # a block no live node reads is a leak (and its children)
        raise AssertionError(f"{live_blocks} shared blocks are allocated, {len(block_users)} in use")
    for k in range(A.capacity):
        # live slots only: a dict lookup per free slot made each check O(capacity) in Python
        if A.nodes[k].refcnt > 0 and A.nodes[k].refcnt != counts.get(k, 0):
            raise AssertionError(f"node {k} counts {A.nodes[k].refcnt} references, has {counts.get(k, 0)}")
    return True


include "_vector_kernels.pxi"
include "_sweep.pxi"
include "_arrays.pxi"
include "_replay.pxi"
