# The backward sweep: every ordered node's local backward, last to first (backward() and
# Graph.backward() when no node has a Python-defined _backward).
#
# A big matmul's backward is bound by memory, not arithmetic: output (i, j) of a @ b adds into
# the gradients of a's row i and of b's column j, whose nodes are far apart. In reverse
# topological order -- (i, j), (i, j-1), ... -- each output fetches a whole column from L2 and
# uses it once. So the sweep defers the 'linear' nodes that share operand rows (array_matmul's
# KidBlocks) and applies them TILE at a time: TILE outputs that read the same row (b's column
# j, for TILE rows i) make one pass over it.
#
# The gradients stay the same bits: every gradient receives its contributions in the same order
# as in the plain sweep, because
#   * the children of the deferred nodes (the batch's targets) are marked, and a node that is a
#     target, or that would add into one, ends the batch: the batch is applied before it. So
#     deferring only moves work past nodes that neither read nor write what it writes;
#   * a target belongs to one block of the batch, once (a second sighting ends the batch), so
#     the outputs of a tile add into distinct nodes except through the blocks they share;
#   * a tile is TILE runs of equal length, each run sharing one block (distinct across the runs)
#     and all runs reading the same sequence of other blocks (distinct within a run): each run
#     keeps its order, and each shared "other" block receives run 0's contribution, then run
#     1's, ..., as in the plain sweep.

cdef enum:
    TILE = 4             # outputs applied together (linear_tile is written for 4)
    MAX_BATCH = 8192     # deferred nodes at most (the static buffer below)
    MIN_DEFER_KIDS = 64  # rows under 32 wide are cheap to re-read: not worth marking
    GIVE_UP = 4          # batches in a row without a tile: the graph's order does not tile
                         # (an MLP's reverse order takes one sample at a time), stop marking

cdef int32_t deferred[MAX_BATCH]  # the batch (used only inside backward_sweep, GIL held)


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


cdef Py_ssize_t row_run(Node* nodes, int32_t* batch, Py_ssize_t size, bint* by_w) noexcept nogil:
    """The length of the run of deferred nodes that share batch[0]'s w row (*by_w) or x row."""
    cdef Node* first = &nodes[batch[0]]
    cdef Py_ssize_t run = 1
    if size < 2:
        return 1
    by_w[0] = nodes[batch[1]].kids.block == first.kids.block
    if not by_w[0] and nodes[batch[1]].aux.block != first.aux.block:
        return 1
    while run < size and run_block(&nodes[batch[run]], by_w[0]) == run_block(first, by_w[0]):
        run += 1
    return run


cdef bint tile_fits(Node* nodes, int32_t* batch, Py_ssize_t size, Py_ssize_t run, bint by_w) noexcept:
    """Whether batch[0 : TILE*run] is TILE runs that can be applied side by side (see the top)."""
    cdef Py_ssize_t r, s, p
    cdef KidBlock* shared[TILE]
    cdef KidBlock* other
    cdef uint32_t stamp
    if run < 2 or TILE * run > size:
        return False
    for r in range(TILE):
        shared[r] = run_block(&nodes[batch[r * run]], by_w)
        for s in range(r):
            if shared[s] == shared[r]:
                return False
        for p in range(run):
            if run_block(&nodes[batch[r * run + p]], by_w) != shared[r]:
                return False
            if other_block(&nodes[batch[r * run + p]], by_w) != other_block(&nodes[batch[p]], by_w):
                return False
    # Distinct other blocks within the run: array_matmul makes one node per pair of rows, so
    # this holds today; checked because the order argument rests on it.
    stamp = next_epoch()  # the batch is complete: its block marks are no longer needed
    for p in range(run):
        other = other_block(&nodes[batch[p]], by_w)
        if other.mark == stamp:
            return False
        other.mark = stamp
    return True


cdef void linear_tile(Node* nodes, int32_t* outs, Py_ssize_t stride, bint by_w) noexcept nogil:
    """linear_local_backward of the TILE (4) outputs outs[0], outs[stride], ... which share one
    block, their other blocks distinct and disjoint from it: each shared node is loaded once
    and its gradient receives the outputs' contributions in their order. Plain float additions:
    join_block cleared the children's int flags."""
    cdef Node* out0 = &nodes[outs[0]]
    cdef Node* out1 = &nodes[outs[stride]]
    cdef Node* out2 = &nodes[outs[2 * stride]]
    cdef Node* out3 = &nodes[outs[3 * stride]]
    cdef double g0 = out0.grad, g1 = out1.grad, g2 = out2.grad, g3 = out3.grad
    cdef int32_t has_bias = out0.nkids & 1, m = out0.nkids >> 1, k
    cdef int32_t* common
    cdef int32_t* r0
    cdef int32_t* r1
    cdef int32_t* r2
    cdef int32_t* r3
    cdef Node* c
    cdef Node* o0
    cdef Node* o1
    cdef Node* o2
    cdef Node* o3
    cdef double cd, cg
    if by_w:  # the outputs share an x row; each has its own [bias,] w row
        common = out0.aux.block.kids
        r0 = out0.kids.block.kids
        r1 = out1.kids.block.kids
        r2 = out2.kids.block.kids
        r3 = out3.kids.block.kids
        if has_bias:
            nodes[r0[0]].grad = nodes[r0[0]].grad + g0
            nodes[r1[0]].grad = nodes[r1[0]].grad + g1
            nodes[r2[0]].grad = nodes[r2[0]].grad + g2
            nodes[r3[0]].grad = nodes[r3[0]].grad + g3
            r0 += 1
            r1 += 1
            r2 += 1
            r3 += 1
    else:  # the outputs share a [bias,] w row; each has its own x row
        common = out0.kids.block.kids
        r0 = out0.aux.block.kids
        r1 = out1.aux.block.kids
        r2 = out2.aux.block.kids
        r3 = out3.aux.block.kids
        if has_bias:
            c = &nodes[common[0]]
            c.grad = c.grad + g0 + g1 + g2 + g3  # (left to right, as one at a time)
            common += 1
    for k in range(m):  # (join_block cleared every child's int flag)
        c = &nodes[common[k]]
        o0 = &nodes[r0[k]]
        o1 = &nodes[r1[k]]
        o2 = &nodes[r2[k]]
        o3 = &nodes[r3[k]]
        cd = c.data
        # w.grad += x.data * g and x.grad += w.data * g, whichever of w and x is shared
        o0.grad = o0.grad + cd * g0
        o1.grad = o1.grad + cd * g1
        o2.grad = o2.grad + cd * g2
        o3.grad = o3.grad + cd * g3
        cg = c.grad + o0.data * g0
        cg = cg + o1.data * g1
        cg = cg + o2.data * g2
        c.grad = cg + o3.data * g3


cdef Py_ssize_t apply_batch(Node* nodes, int32_t* batch, Py_ssize_t size) noexcept:
    """The deferred nodes' local backward: in tiles where the runs line up, else in order.
    Returns how many ran in tiles."""
    global tiled_outputs
    cdef Py_ssize_t t = 0, run, p, in_tiles = 0
    cdef bint by_w = True
    cdef Node* n
    while t < size:
        run = row_run(nodes, batch + t, size - t, &by_w)
        if tile_fits(nodes, batch + t, size - t, run, by_w):
            for p in range(run):
                linear_tile(nodes, batch + t + p, run, by_w)
            t += TILE * run
            in_tiles += TILE * run
        else:
            for p in range(t, t + run):
                n = &nodes[batch[p]]
                linear_local_backward(nodes, n, n.grad, False)
            t += run
    tiled_outputs += in_tiles
    return in_tiles


cdef void backward_sweep(Node* nodes, int32_t* order, Py_ssize_t count) noexcept:
    """Every ordered node's builtin local backward, order[count-1] first (see the top)."""
    cdef Py_ssize_t k = count - 1, size
    cdef Node* n
    cdef uint32_t epoch
    cdef int fruitless = 0  # batches in a row that made no tile
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
        elif apply_batch(nodes, deferred, size):
            fruitless = 0
        else:
            fruitless += 1
