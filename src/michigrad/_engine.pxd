# The C surface of michigrad's compiled core: the node arena, the op codes, the Value handle.
#
# A node lives in one growable C array (the arena) and is named by its index; Python `Value`
# objects are handles that hold an index, never a pointer, because the array moves when it
# grows. The whole module's state is the single `Arena` in _engine.pyx.

from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t

# Op codes: one entry of the op table each (forward in the Value methods, local backward in
# `_apply_local_backward`).
cdef enum Op:
    OP_LEAF = 0      # Value(x): no children (also numbers wrapped by an operator)
    OP_ADD = 1       # '+'
    OP_MUL = 2       # '*'
    OP_POWC = 3      # '**c' with c a number, kept in aux
    OP_POW = 4       # '**' Value ** Value
    OP_EXP = 5       # 'exp'
    OP_LOG = 6       # 'log'
    OP_TANH = 7      # 'tanh'
    OP_RELU = 8      # 'ReLU'
    OP_SIGMOID = 9   # 'sigmoid'
    OP_ABS = 10      # 'abs'
    OP_PYTHON = 11   # Value(x, children, 'label'): local backward is a Python callable
    OP_LINEAR = 12   # 'linear': bias + sum(w[i] * x[i]) as one node (a neuron's pre-activation);
                     # children [bias,] w[0..n), x[0..n): an odd count means there is a bias
    # The array kernels' ops (issue #5, _arrays.pxi); each has a case in op_forward or
    # node_forward (replay) and in builtin_local_backward, and the same op in _reference_arrays.py.
    # OP_LINEAR..OP_MIN are the ops with any number of children: builtin_local_backward tests
    # for them with one range check, so keep them contiguous.
    OP_SUM = 13      # 'sum': n children, summed left to right
    OP_MAX = 14      # 'max': n children; the gradient goes to the first maximal child
    OP_MIN = 15      # 'min': n children; the gradient goes to the first minimal child
    OP_LEAKY_RELU = 16  # 'leaky_relu': x if x > 0 else slope * x, slope kept in aux
    OP_ELU = 17      # 'elu': x if x > 0 else alpha * (exp(x) - 1), alpha kept in aux
    OP_STD = 18      # 'std': a variance's square root, x ** 0.5 (0.5 kept in aux), whose
                     # gradient is 0 where it is 0 (PyTorch's std; '**0.5' gives NaN there)

# What an op's forward reports where Python would raise (see raise_forward_error).
cdef enum ForwardError:
    FWD_OK = 0
    FWD_OVERFLOW = 1       # OverflowError: exp or ** too large for a float
    FWD_DOMAIN = 2         # ValueError: log of a non-positive number
    FWD_ZERO_DIVISION = 3  # ZeroDivisionError: 0.0 ** negative
    FWD_COMPLEX = 4        # ValueError: negative ** fractional would be a complex number

# Node flag bits.
cdef enum Flag:
    F_DATA_INT = 1    # data is a Python int (exact: |data| < 2**53)
    F_GRAD_INT = 2    # grad is a Python int
    F_AUX_INT = 4     # the op constant (exponent of '**c') is an int
    F_PY_BACKWARD = 8 # extra.backward overrides the op table's local backward
    F_LABEL = 16      # extra.label overrides the op table's label
    F_SHARED_KIDS = 32  # the children are two KidBlocks shared with other nodes (kids.block,
                        # aux.block): array_matmul's operand rows

# The blocks of one operand of one array_matmul call, in one malloc: the slab header, then the
# blocks side by side (one allocation per call instead of one per row, and the rows the
# topological sort, the sweep and the release walk lie together). The last block released frees
# it: an output that outlives the others keeps the slab's memory, not the nodes of its rows.
ctypedef struct BlockSlab:
    Py_ssize_t live      # the slab's blocks not yet released

# A row of children that many nodes share: array_matmul's operand rows (a w row with its bias,
# an x row), each stored once instead of once per output node. The block holds one reference to
# each of its nodes; each node whose children it is holds one reference to the block.
ctypedef struct KidBlock:
    uint32_t refcnt      # the nodes whose children include this block
    uint32_t mark        # a visit epoch: the topological sort scans a block once per sort; the
                         # backward sweep marks a batch's blocks, place_rows the rows it copies
    int32_t n
    int32_t nleaves      # how many of the children are leaves (nkids 0): the backward sweep
                         # defers the gradients of a row of leaves only
    Py_ssize_t row       # place_rows' scratch: where the block's copy starts in a RowBuffer
    BlockSlab* slab      # the allocation the block lives in
    int32_t* kids        # the n children (stored right after the struct, in the same slab)

# More than two children (Python ops, 'linear', 'sum', 'max', 'min') live in a malloc'd array
# owned by the node, or (F_SHARED_KIDS) in two shared blocks: kids.block, then aux.block.
cdef union Kids:
    int32_t pair[2]
    int32_t* many
    KidBlock* block

cdef union Aux:
    double c             # op constant: the exponent of '**c', leaky_relu's slope, elu's alpha
    KidBlock* block      # F_SHARED_KIDS: the second block of children (no op has both)

# 64 bytes: the whole per-node cost while no handle is alive.
ctypedef struct Node:
    double data
    double grad
    Aux aux              # op constant, or the second block of shared children
    Kids kids            # children (pair[i] == -1 when absent, `many` or blocks when nkids > 2)
    int32_t nkids
    uint32_t refcnt      # the live handle (0 or 1) + one per reference from a parent
    uint32_t mark        # visit epoch during backward (and the sweep's batch marks)
    uint16_t op
    uint16_t flags
    PyObject* handle     # borrowed: the live Value handle of this node, or NULL
    PyObject* extra      # owned: a NodeExtra (name, label, Python backward, attributes) or NULL

ctypedef struct Arena:
    Node* nodes
    int32_t capacity
    int32_t* free_slots  # the free slots as a stack (the top is taken next): an array, not a
                         # list threaded through the nodes, so taking a slot never waits
                         # for the previous one's cache line
    int32_t nfree
    uint64_t* free_bits  # scratch bitmap (a bit per slot, all zero between uses) with which
    Py_ssize_t free_bits_words  # release_queued() puts a large freed run in address order
                                # (grown as needed, never shrunk: 1/512 of the nodes' memory)
    int32_t* dying       # nodes whose count reached zero, waiting to be released (a stack:
    int32_t ndying       # each node is on it at most once, so the arena's capacity bounds it)
    bint releasing       # a release loop is running (re-entrant releases queue onto it)
    uint32_t epoch       # current backward visit mark
    Py_ssize_t live      # counters for the debug hook `_arena_stats()`
    Py_ssize_t allocations
    Py_ssize_t reuses


cdef class NodeExtra:
    """What a node holds for Python: only nodes that need one have it."""
    cdef str name
    cdef str label
    cdef object backward
    cdef dict attrs      # extra attributes set on the Value (optimiser state, ...)


cdef class Value:
    cdef int32_t _i          # arena slot; 0 (never a node) until __init__ or the engine sets it
    cdef object __weakref__
    # Never set: an object field makes Cython build the type with GC support, which the handle
    # needs to report what its node holds for Python (the generated traverse/clear are replaced).
    cdef object _gc_support


# An array's storage (issue #5, the kernels in _arrays.pxi): one reference per slot to an
# engine node, held as its arena index; no Python object per element.
cdef class NodeStore:
    cdef int32_t* slots   # malloc'd, n entries, each a node this store holds one reference to
    cdef Py_ssize_t n
    cdef PyObject* prev   # the live stores form a list (borrowed links), for _arena_check
    cdef PyObject* next


cdef Value handle_of(int32_t i)
cdef int32_t new_node(double data, uint16_t flags, uint16_t op, int32_t a, int32_t b) except -1
cdef int32_t adopting_node(double data, uint16_t flags, uint16_t op, int32_t a, int32_t b) noexcept
cdef int reserve(int32_t n) except -1
cdef void incref_node(int32_t i) noexcept
cdef void decref_node(int32_t i) noexcept
cdef void decref_nodes(const int32_t* slots, Py_ssize_t n) noexcept
cdef int run_backward(int32_t root) except -1
cdef int apply_local_backward(int32_t i) except -1
cdef void backward_sweep(Node* nodes, int32_t* order, Py_ssize_t count) noexcept
cdef int node_forward(Node* nodes, int32_t i) noexcept nogil
cdef int raise_node_forward_error(Node* nodes, int32_t i, int error) except -1


# Graph replay (_replay.pxi): a recorded graph, re-run in C through the op table.
ctypedef struct SavedData:
    double data
    uint16_t flags

cdef class Tape:
    cdef int32_t root
    cdef int32_t* order          # op nodes, children before parents (backward()'s order)
    cdef int32_t* by_depth       # the same nodes by depth, the order forward() runs them in
                                 # when the graph has matmul outputs (else NULL)
    cdef Py_ssize_t* depth_ends  # by_depth[depth_ends[d-1] : depth_ends[d]]: the nodes of depth d+1
    cdef Py_ssize_t ndepths
    cdef SavedData* saved        # by depth, when an op may fail (exp, log, the powers): the old
                                 # data of the nodes a forward has replaced (else NULL)
    cdef Py_ssize_t count
    cdef int32_t* leaves         # the graph's leaves, each once (checked for a late _backward)
    cdef Py_ssize_t nleaves
    cdef int32_t* inputs         # bound input leaves, in feed order
    cdef Py_ssize_t ninputs
    cdef int32_t* params         # train_step's parameters
    cdef Py_ssize_t nparams
    cdef int32_t* update         # sgd_step's/adam_step's parameters, group after group
    cdef Py_ssize_t nupdate
    cdef list update_groups      # the lists of Values behind `update` (they keep the nodes alive)
    cdef list group_sizes
    cdef tuple input_shape
    cdef bint is_open
    cdef int busy                # > 0 while a method that may run Python code holds the buffers
    cdef bint stale              # a forward failed midway: backward refuses until one succeeds
    cdef unsigned long long checked_sets  # py_backward_sets when no captured node had a Python _backward

    cdef void release(self) noexcept
    cdef int check(self) except -1
    cdef int run_forward(self) except -1
    cdef int forward_nodes(self, int32_t* order, Py_ssize_t start, Py_ssize_t end) except -1
    cdef int forward_by_depth(self) except -1
    cdef int run_backward(self) except -1
    cdef object set_update_groups_body(self, list groups)
    cdef object sgd_step_body(self, list lrs)
    cdef object adam_step_body(self, list configs, dict state)
    cdef object export_body(self, list params)
