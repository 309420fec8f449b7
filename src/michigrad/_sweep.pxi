# The backward sweep: every ordered node's local backward, last to first (backward() and
# Graph.backward() when no node has a Python-defined _backward).
#
# A matmul's or dense layer's backward is bound by memory, not arithmetic: output (i, j) of
# a @ b adds into the gradients of a's row i and of b's column j, nodes 64 bytes apart and far
# from one another, and in the reverse topological order an MLP's layer takes one sample at a
# time. But no node's local backward reads another node's gradient: a leaf's gradient is only
# written during the sweep. So the sweep defers the contributions of the 'linear' nodes over
# shared rows (array_matmul's KidBlocks) into rows made only of leaves -- the weights, the
# inputs -- and applies them in a batch, on dense copies of the rows: each row's data (and, for
# a leaf row, its gradients) copied once, every deferred output adding into the copies
# (contiguous doubles: vector loads; four outputs that share a row load and store it once), and
# the gradients copied back. The contributions into other rows (an activation's row) are made
# at once, in the plain order, as they must be: the nodes below read those gradients.
#
# The gradients stay the same bits: every gradient receives its contributions in the same order
# as in the plain sweep, because
#   * the nodes of the deferred rows (the batch's targets) are marked, and a node that would
#     add into one ends the batch: the batch is applied before it. The targets are leaves, which
#     nothing else reads, so deferring only moves their additions past nodes that neither read
#     nor write them;
#   * a target belongs to one row of the batch, once (a second sighting ends the batch), so the
#     copies of two rows never hold the same node, and a copy is the node's only copy;
#   * the outputs are applied in batch order (the plain order), each adding into its own rows.
cdef enum:
    GROUP = 4            # outputs sharing a row applied together (mg_axpy4 is written for 4)
    MAX_BATCH = 8192     # deferred nodes at most (the static buffers below)
    MIN_DEFER_KIDS = 64  # rows under 32 wide are cheap to apply at once: not worth deferring
    MIN_READS = 4        # copy a batch's rows only if each is read this often on average
    GIVE_UP = 4          # batches in a row not worth copying: the graph's order does not batch
                         # (an MLP's reverse order takes one sample at a time), stop marking

# Used only inside backward_sweep (the batch; the GIL held) and place_rows (the distinct blocks
# of a batch, or of a replayed forward's run of matmul outputs).
cdef int32_t deferred[MAX_BATCH]
cdef KidBlock* batch_blocks[2 * MAX_BATCH]


cdef inline bint leaf_row(KidBlock* block) noexcept nogil:
    """Every node of the block is a leaf: its gradients may be deferred."""
    return block.nleaves == block.n


cdef inline bint deferrable(Node* n) noexcept nogil:
    """A matmul node over shared rows, one of them leaves only, whose local backward is plain
    float arithmetic (its gradient is a float, so every contribution it makes is one)."""
    return ((n.flags & (F_SHARED_KIDS | F_GRAD_INT)) == F_SHARED_KIDS and n.nkids >= MIN_DEFER_KIDS
            and (leaf_row(n.kids.block) or leaf_row(n.aux.block)))


cdef inline bint is_target(uint32_t mark, uint32_t epoch) noexcept nogil:
    """A mark says the node or block is in the current batch: a target node is marked epoch; a
    block epoch as a w row, epoch + 1 as an x row."""
    return mark - epoch <= 1


cdef inline uint32_t epoch_pair() noexcept:
    """Two consecutive fresh marks e and e + 1 (never straddling next_epoch's wrap-around)."""
    cdef uint32_t e = next_epoch()
    if e == 0xFFFFFFFF:
        e = next_epoch()  # wraps: every mark cleared, e == 1
    next_epoch()
    return e


cdef inline bint join_block(Node* nodes, KidBlock* block, uint32_t role, uint32_t epoch) noexcept nogil:
    """Put a block in the batch in a role (epoch: w row, epoch + 1: x row), marking its nodes;
    False on a conflict: the block is there in the other role, or one of its nodes is already
    a target (of another block, or earlier in this one). A refusal's marks are harmless: the
    batch is applied next and the following one takes new marks."""
    cdef int32_t k
    cdef Node* c
    if block.mark == role:
        return True
    if is_target(block.mark, epoch):  # (array_matmul makes every block for one role; a future
        return False                   # kernel sharing one block both ways would land here)
    block.mark = role
    for k in range(block.n):
        c = &nodes[block.kids[k]]
        if is_target(c.mark, epoch):
            return False
        c.mark = epoch
        # Every deferred node adds a float into each of its children, and nothing reads a
        # target's int flag before the batch is applied (a refused block's node is next in line,
        # its contributions floats too): clear it now rather than once per contribution.
        c.flags &= ~F_GRAD_INT
    return True


cdef inline bint block_in_batch(Node* nodes, KidBlock* block, uint32_t epoch) noexcept nogil:
    """Whether a node of the block is one of the batch's targets (which are leaves)."""
    cdef int32_t k
    if block.nleaves == 0:
        return False
    for k in range(block.n):
        if is_target(nodes[block.kids[k]].mark, epoch):
            return True
    return False


cdef inline bint adds_into_batch(Node* nodes, Node* n, uint32_t epoch) noexcept nogil:
    cdef int32_t k
    for k in range(n.nkids):
        if is_target(nodes[kid(n, k)].mark, epoch):
            return True
    return False


cdef inline KidBlock* run_block(Node* n, bint by_w) noexcept nogil:
    return n.kids.block if by_w else n.aux.block


cdef inline KidBlock* other_block(Node* n, bint by_w) noexcept nogil:
    return n.aux.block if by_w else n.kids.block


cdef void linear_side(Node* nodes, Node* out, bint w_side) noexcept nogil:
    """Half of linear_local_backward for a float gradient: the contributions into the w row
    ([bias,] w: bias.grad += g, w[k].grad += x[k].data * g) or into the x row (x[k].grad +=
    w[k].data * g)."""
    cdef int32_t has_bias = out.nkids & 1, m = out.nkids >> 1, k
    cdef int32_t* x_kids
    cdef int32_t* w_kids = linear_rows(out, &x_kids)
    cdef double g = out.grad
    if w_side:
        if has_bias:
            accumulate(&nodes[w_kids[0]], g, False)
        for k in range(m):
            accumulate(&nodes[w_kids[has_bias + k]], nodes[x_kids[k]].data * g, False)
    else:
        for k in range(m):
            accumulate(&nodes[x_kids[k]], nodes[w_kids[has_bias + k]].data * g, False)


ctypedef struct RowBuffer:
    # Copies of rows (blocks), each at its block.row: owned by one backward_sweep or one replayed
    # forward, grown by a batch that needs more, freed when that sweep or forward ends.
    double* data       # every block's row of data ...
    double* grad       # ... and of gradients (those of leaf rows; the backward sweep's only)
    Py_ssize_t capacity       # doubles in data
    Py_ssize_t grad_capacity  # doubles in grad


cdef Py_ssize_t place_rows(Node* nodes, int32_t* batch, Py_ssize_t size, Py_ssize_t* nblocks) noexcept:
    """List the batch's distinct blocks in batch_blocks (*nblocks) and give each its place in
    the rows (block.row); returns the rows' total length."""
    cdef uint32_t stamp = next_epoch()  # the batch is complete: its block marks are spent
    cdef Py_ssize_t t, total = 0, count = 0
    cdef KidBlock* block
    cdef int side
    for t in range(size):
        for side in range(2):
            block = nodes[batch[t]].kids.block if side == 0 else nodes[batch[t]].aux.block
            if block.mark != stamp:
                block.mark = stamp
                block.row = total
                total += block.n
                batch_blocks[count] = block
                count += 1
    nblocks[0] = count
    return total


cdef bint reserve_rows(RowBuffer* rows, Py_ssize_t total, bint grads) noexcept:
    """Room for `total` doubles of data (and of gradients if grads); False when out of memory."""
    cdef double* p
    if total > rows.capacity:
        p = <double*>realloc(rows.data, <size_t>total * sizeof(double))
        if p == NULL:
            return False
        rows.data = p
        rows.capacity = total
    if grads and total > rows.grad_capacity:
        p = <double*>realloc(rows.grad, <size_t>total * sizeof(double))
        if p == NULL:
            return False
        rows.grad = p
        rows.grad_capacity = total
    return True


cdef bint share_a_row(Node* nodes, int32_t* outs, Py_ssize_t count, bint* by_w) noexcept nogil:
    """Whether the matmul nodes outs[0 : count] (count >= 2) share one block: their w row
    (*by_w True) or their x row (*by_w False)."""
    cdef Py_ssize_t u
    cdef Node* first = &nodes[outs[0]]
    by_w[0] = nodes[outs[1]].kids.block == first.kids.block
    for u in range(1, count):
        if run_block(&nodes[outs[u]], by_w[0]) != run_block(first, by_w[0]):
            return False
    return True


cdef Py_ssize_t group_of(Node* nodes, int32_t* batch, Py_ssize_t size, bint* by_w) noexcept nogil:
    """GROUP when batch[0 : GROUP] share one row (*by_w: their w row, else their x row), else 1
    (*by_w True: a lone output's shared row is its w row)."""
    if size >= GROUP and share_a_row(nodes, batch, GROUP, by_w):
        return GROUP
    by_w[0] = True
    return 1


cdef inline bint distinct_leaf_rows(KidBlock** rows) noexcept nogil:
    """Whether the GROUP blocks are rows of leaves and distinct (mg_axpy4_both writes them all
    in one pass)."""
    cdef Py_ssize_t u, v
    for u in range(GROUP):
        if not leaf_row(rows[u]):
            return False
        for v in range(u):
            if rows[v] == rows[u]:
                return False
    return True


cdef void apply_rows(Node* nodes, int32_t* batch, Py_ssize_t size, RowBuffer* rows) noexcept nogil:
    """The deferred contributions of the batch's outputs, in order, into the copied leaf rows: a
    w row is [bias,] w[0..m), an x row x[0..m). Plain float additions: join_block cleared every
    target's int flag, and every deferred output's gradient is a float."""
    cdef Py_ssize_t t = 0, count, u, shared_at, other_skip
    cdef bint by_w
    cdef Node* n
    cdef KidBlock* shared
    cdef KidBlock* other[GROUP]
    cdef double g[GROUP]
    cdef double* og[GROUP]       # the products' part of each output's own row: gradients ...
    cdef const double* od[GROUP]  # ... and data
    cdef double* grad = rows.grad
    cdef int32_t has_bias, m
    while t < size:
        n = &nodes[batch[t]]
        has_bias = n.nkids & 1
        m = n.nkids >> 1
        count = group_of(nodes, batch + t, size - t, &by_w)
        shared = run_block(n, by_w)
        shared_at = shared.row + (has_bias if by_w else 0)  # the products start after a bias
        other_skip = 0 if by_w else has_bias
        for u in range(count):
            g[u] = nodes[batch[t + u]].grad
            other[u] = other_block(&nodes[batch[t + u]], by_w)
            og[u] = grad + other[u].row + other_skip
            od[u] = rows.data + other[u].row + other_skip
            if has_bias and not by_w and leaf_row(other[u]):  # its own row holds the bias
                grad[other[u].row] = grad[other[u].row] + g[u]
        if has_bias and by_w and leaf_row(shared):  # the shared row holds the bias
            for u in range(count):
                grad[shared.row] = grad[shared.row] + g[u]
        if count == GROUP and leaf_row(shared) and distinct_leaf_rows(other):
            mg_axpy4_both(grad + shared_at, rows.data + shared_at, og[0], od[0], g[0],
                          og[1], od[1], g[1], og[2], od[2], g[2], og[3], od[3], g[3], m)
        else:
            for u in range(count):  # other.grad[k] += shared.data[k] * g
                if leaf_row(other[u]):
                    mg_axpy(og[u], rows.data + shared_at, g[u], m)
            if leaf_row(shared):  # shared.grad[k] += other.data[k] * g, the outputs in order
                if count == GROUP:
                    mg_axpy4(grad + shared_at, od[0], g[0], od[1], g[1], od[2], g[2], od[3], g[3], m)
                else:
                    mg_axpy(grad + shared_at, od[0], g[0], m)
        t += count


cdef void apply_nodes(Node* nodes, int32_t* batch, Py_ssize_t size) noexcept nogil:
    """The deferred contributions of the batch's outputs, in order, node by node."""
    cdef Py_ssize_t t
    cdef Node* n
    cdef bint w_later, x_later
    for t in range(size):
        n = &nodes[batch[t]]
        w_later = leaf_row(n.kids.block)
        x_later = leaf_row(n.aux.block)
        if w_later and x_later:
            linear_local_backward(nodes, n, n.grad, False)
        else:
            linear_side(nodes, n, w_later)


cdef Py_ssize_t apply_batch(Node* nodes, int32_t* batch, Py_ssize_t size, RowBuffer* rows) noexcept:
    """The batch's deferred contributions, in batch order: on copies of the rows when each row
    is read often enough to pay for its copy (and memory allows), else node by node. Returns
    how many outputs ran on copies."""
    global row_copied_outputs
    cdef Py_ssize_t nblocks, b, k
    cdef Py_ssize_t total = place_rows(nodes, batch, size, &nblocks)
    cdef KidBlock* block
    if 2 * size < MIN_READS * nblocks or not reserve_rows(rows, total, True):
        apply_nodes(nodes, batch, size)
        return 0
    for b in range(nblocks):
        block = batch_blocks[b]
        for k in range(block.n):
            rows.data[block.row + k] = nodes[block.kids[k]].data
        if leaf_row(block):
            for k in range(block.n):
                rows.grad[block.row + k] = nodes[block.kids[k]].grad
    apply_rows(nodes, batch, size, rows)
    for b in range(nblocks):
        block = batch_blocks[b]
        if leaf_row(block):
            for k in range(block.n):
                nodes[block.kids[k]].grad = rows.grad[block.row + k]
    row_copied_outputs += size
    return size


cdef bint defer_output(Node* nodes, Node* n, uint32_t epoch) noexcept nogil:
    """Put n's contributions into its leaf rows in the batch (marking them) and make the others
    now; False, with nothing made, when that would break the plain order: a node of its rows is
    a target already (or twice in them), or its other row holds a target."""
    cdef KidBlock* w = n.kids.block
    cdef KidBlock* x = n.aux.block
    if leaf_row(w) and not join_block(nodes, w, epoch, epoch):
        return False
    if leaf_row(x) and not join_block(nodes, x, epoch + 1, epoch):
        return False
    if not leaf_row(x) and block_in_batch(nodes, x, epoch):
        return False
    if not leaf_row(w) and block_in_batch(nodes, w, epoch):
        return False
    if not leaf_row(x):
        linear_side(nodes, n, False)
    elif not leaf_row(w):
        linear_side(nodes, n, True)
    return True


cdef void backward_sweep(Node* nodes, int32_t* order, Py_ssize_t count) noexcept:
    """Every ordered node's builtin local backward, order[count-1] first (see the top)."""
    cdef Py_ssize_t k = count - 1, size
    cdef Node* n
    cdef uint32_t epoch
    cdef int fruitless = 0  # batches in a row not worth copying
    cdef RowBuffer rows
    rows.data = NULL
    rows.grad = NULL
    rows.capacity = rows.grad_capacity = 0
    while k >= 0:
        n = &nodes[order[k]]
        if fruitless >= GIVE_UP or not deferrable(n):
            builtin_local_backward(nodes, order[k])
            k -= 1
            continue
        epoch = epoch_pair()
        size = 0
        while k >= 0 and size < MAX_BATCH:  # (the targets are leaves: never in the order)
            n = &nodes[order[k]]
            if deferrable(n):
                if not defer_output(nodes, n, epoch):
                    break
                deferred[size] = order[k]
                size += 1
            elif adds_into_batch(nodes, n, epoch):
                break
            else:
                builtin_local_backward(nodes, order[k])
            k -= 1
        if size == 0:  # its own rows share a node (a @ a, a row holding a node twice): alone
            builtin_local_backward(nodes, order[k])
            k -= 1
            fruitless += 1
        elif apply_batch(nodes, deferred, size, &rows):
            fruitless = 0
        else:
            fruitless += 1
    free(rows.data)
    free(rows.grad)
