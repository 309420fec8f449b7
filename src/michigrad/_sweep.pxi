# The backward sweep: every ordered node's local backward, last to first (backward() and
# Graph.backward() when no node has a Python-defined _backward).
#
# A big matmul's backward is bound by memory, not arithmetic: output (i, j) of a @ b adds into
# the gradients of a's row i and of b's column j, whose nodes are 64 bytes apart each and far
# from one another. So the sweep defers the 'linear' nodes that share operand rows
# (array_matmul's KidBlocks), then applies the batch through dense copies of those rows: each
# block's data and gradients are copied into a buffer once, every deferred output adds into
# the copies (contiguous doubles: vector loads, and four outputs that share a row load and store
# it once), and the gradients are copied back.
#
# The gradients stay the same bits: every gradient receives its contributions in the same order
# as in the plain sweep, because
#   * the children of the deferred nodes (the batch's targets) are marked, and a node that is a
#     target, or that would add into one, ends the batch: the batch is applied before it. So
#     deferring only moves work past nodes that neither read nor write what it writes;
#   * a target belongs to one block of the batch, once (a second sighting ends the batch), so
#     the copies of two blocks never hold the same node, and a copy is the node's only copy;
#   * the outputs are applied in batch order (the plain order), each adding into its own two
#     rows; four outputs applied together share one row, which receives their contributions
#     in their order, and have four distinct other rows, one contribution each.

cdef enum:
    GROUP = 4            # outputs sharing a row applied together (mg_rows_four is written for 4)
    MAX_BATCH = 8192     # deferred nodes at most (the static buffers below)
    MIN_DEFER_KIDS = 64  # rows under 32 wide are cheap to re-read: not worth marking
    MIN_READS = 4        # copy a batch's rows only if each is read this often on average
    GIVE_UP = 4          # batches in a row not worth copying: the graph's order does not batch
                         # (an MLP's reverse order takes one sample at a time), stop marking

# Used only inside backward_sweep (GIL held): the batch, and its distinct blocks.
cdef int32_t deferred[MAX_BATCH]
cdef KidBlock* batch_blocks[2 * MAX_BATCH]


cdef inline bint deferrable(Node* n) noexcept nogil:
    """A matmul node over wide shared rows whose local backward is plain float arithmetic (its
    gradient is a float, so every contribution it makes is one)."""
    return (n.flags & (F_SHARED_KIDS | F_GRAD_INT)) == F_SHARED_KIDS and n.nkids >= MIN_DEFER_KIDS


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


cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    /* GCC's -O2 vectorizes only loops whose trip count is a known multiple of the vector width:
       let these two pay for an epilogue (clang and MSVC vectorize them at their default level) */
    #define MG_VECTORIZE __attribute__((optimize("vect-cost-model=dynamic")))
    #else
    #define MG_VECTORIZE
    #endif

    /* One output's contributions through dense rows s and o (data sd, od; gradients sg, og):
       sg[k] += od[k] * g and og[k] += sd[k] * g. The rows are copies of distinct nodes. */
    MG_VECTORIZE static void mg_rows_one(double* restrict sg, const double* restrict sd,
                                         double* restrict og, const double* restrict od,
                                         double g, Py_ssize_t m)
    {
        for (Py_ssize_t k = 0; k < m; k++) {
            sg[k] = sg[k] + od[k] * g;
            og[k] = og[k] + sd[k] * g;
        }
    }

    /* Four outputs, in order, that share row s and each have their own row o0..o3: s's
       gradient receives their contributions one after the other, as one at a time. */
    MG_VECTORIZE static void mg_rows_four(double* restrict sg, const double* restrict sd,
        double* restrict og0, const double* restrict od0, double g0,
        double* restrict og1, const double* restrict od1, double g1,
        double* restrict og2, const double* restrict od2, double g2,
        double* restrict og3, const double* restrict od3, double g3, Py_ssize_t m)
    {
        for (Py_ssize_t k = 0; k < m; k++) {
            double s = sd[k], acc = sg[k];
            acc = acc + od0[k] * g0; og0[k] = og0[k] + s * g0;
            acc = acc + od1[k] * g1; og1[k] = og1[k] + s * g1;
            acc = acc + od2[k] * g2; og2[k] = og2[k] + s * g2;
            acc = acc + od3[k] * g3; og3[k] = og3[k] + s * g3;
            sg[k] = acc;
        }
    }
    """
    void mg_rows_one(double* sg, const double* sd, double* og, const double* od, double g,
                     Py_ssize_t m) noexcept nogil
    void mg_rows_four(double* sg, const double* sd, double* og0, const double* od0, double g0,
                      double* og1, const double* od1, double g1, double* og2, const double* od2,
                      double g2, double* og3, const double* od3, double g3, Py_ssize_t m) noexcept nogil


ctypedef struct RowBuffer:
    double* data       # every block's row of data, block.row onwards ...
    double* grad       # ... and of gradients, at the same offset
    Py_ssize_t capacity  # doubles in each (grown by a batch that needs more, freed by the sweep)


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


cdef bint reserve_rows(RowBuffer* rows, Py_ssize_t total) noexcept:
    """Room for `total` doubles of data and of gradients; False when out of memory."""
    cdef double* p
    if total <= rows.capacity:
        return True
    p = <double*>realloc(rows.data, <size_t>total * sizeof(double))
    if p == NULL:
        return False
    rows.data = p
    p = <double*>realloc(rows.grad, <size_t>total * sizeof(double))
    if p == NULL:
        return False
    rows.grad = p
    rows.capacity = total
    return True


cdef Py_ssize_t group_of(Node* nodes, int32_t* batch, Py_ssize_t size, bint* by_w) noexcept nogil:
    """GROUP when batch[0 : GROUP] share one block (their w row when *by_w, else their x row)
    and have distinct other blocks; else 1 (*by_w True)."""
    cdef Py_ssize_t u, v
    cdef Node* first = &nodes[batch[0]]
    by_w[0] = True
    if size < GROUP:
        return 1
    by_w[0] = nodes[batch[1]].kids.block == first.kids.block
    for u in range(1, GROUP):
        if run_block(&nodes[batch[u]], by_w[0]) != run_block(first, by_w[0]):
            by_w[0] = True
            return 1
        for v in range(u):
            if other_block(&nodes[batch[u]], by_w[0]) == other_block(&nodes[batch[v]], by_w[0]):
                by_w[0] = True
                return 1
    return GROUP


cdef void apply_rows(Node* nodes, int32_t* batch, Py_ssize_t size, RowBuffer* rows) noexcept nogil:
    """linear_local_backward of the batch's outputs, in order, on the copied rows: a w row is
    [bias,] w[0..m), an x row x[0..m). Plain float additions: join_block cleared every child's
    int flag, and every deferred output's gradient is a float."""
    cdef Py_ssize_t t = 0, count, u, own
    cdef bint by_w
    cdef Node* n
    cdef KidBlock* shared
    cdef KidBlock* other[GROUP]
    cdef Py_ssize_t at[GROUP]
    cdef double g[GROUP]
    cdef double* sd
    cdef double* sg
    cdef int32_t has_bias, m
    while t < size:
        n = &nodes[batch[t]]
        has_bias = n.nkids & 1
        m = n.nkids >> 1
        count = group_of(nodes, batch + t, size - t, &by_w)
        shared = run_block(n, by_w)
        sd = rows.data + shared.row
        sg = rows.grad + shared.row
        own = 0 if by_w else has_bias  # where the products start in the other rows
        for u in range(count):
            g[u] = nodes[batch[t + u]].grad
            other[u] = other_block(&nodes[batch[t + u]], by_w)
            at[u] = other[u].row + own
            if has_bias and not by_w:  # the other rows are [bias,] w: bias.grad += g
                rows.grad[other[u].row] = rows.grad[other[u].row] + g[u]
        if has_bias and by_w:  # the shared row is [bias,] w
            for u in range(count):
                sg[0] = sg[0] + g[u]
            sd += 1
            sg += 1
        if count == 1:
            mg_rows_one(sg, sd, rows.grad + at[0], rows.data + at[0], g[0], m)
        else:
            mg_rows_four(sg, sd, rows.grad + at[0], rows.data + at[0], g[0],
                         rows.grad + at[1], rows.data + at[1], g[1],
                         rows.grad + at[2], rows.data + at[2], g[2],
                         rows.grad + at[3], rows.data + at[3], g[3], m)
        t += count


cdef Py_ssize_t apply_batch(Node* nodes, int32_t* batch, Py_ssize_t size, RowBuffer* rows) noexcept:
    """The deferred nodes' local backward, in batch order: through copies of their rows when
    each row is read often enough to pay for its copy (and memory allows), else node by node.
    Returns how many ran on copies."""
    global row_copied_outputs
    cdef Py_ssize_t nblocks, b, k, t
    cdef Py_ssize_t total = place_rows(nodes, batch, size, &nblocks)
    cdef KidBlock* block
    cdef Node* n
    if 2 * size < MIN_READS * nblocks or not reserve_rows(rows, total):
        for t in range(size):
            n = &nodes[batch[t]]
            linear_local_backward(nodes, n, n.grad, False)
        return 0
    for b in range(nblocks):
        block = batch_blocks[b]
        for k in range(block.n):
            rows.data[block.row + k] = nodes[block.kids[k]].data
            rows.grad[block.row + k] = nodes[block.kids[k]].grad
    apply_rows(nodes, batch, size, rows)
    for b in range(nblocks):
        block = batch_blocks[b]
        for k in range(block.n):
            nodes[block.kids[k]].grad = rows.grad[block.row + k]
    row_copied_outputs += size
    return size


cdef void backward_sweep(Node* nodes, int32_t* order, Py_ssize_t count) noexcept:
    """Every ordered node's builtin local backward, order[count-1] first (see the top)."""
    cdef Py_ssize_t k = count - 1, size
    cdef Node* n
    cdef uint32_t epoch
    cdef int fruitless = 0  # batches in a row not worth copying
    cdef RowBuffer rows
    rows.data = NULL
    rows.grad = NULL
    rows.capacity = 0
    while k >= 0:
        n = &nodes[order[k]]
        if fruitless >= GIVE_UP or not deferrable(n):
            builtin_local_backward(nodes, order[k])
            k -= 1
            continue
        epoch = epoch_pair()
        size = 0
        while k >= 0 and size < MAX_BATCH:
            n = &nodes[order[k]]
            if is_target(n.mark, epoch):
                break  # its gradient is complete once the batch is applied
            if deferrable(n):
                if not (join_block(nodes, n.kids.block, epoch, epoch)
                        and join_block(nodes, n.aux.block, epoch + 1, epoch)):
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
