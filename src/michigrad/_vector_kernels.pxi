# The arithmetic loops of the matmul kernels, over contiguous doubles: array_matmul's sums
# (mg_dots) and the backward sweep's contributions into copied rows (mg_axpy*). They are C, not
# Cython, so that each is compiled once per x86-64 vector width (SSE2, the baseline every x86-64
# CPU runs; AVX2; AVX-512) and the widest one the CPU and OS support is picked when the module
# loads. Elsewhere (aarch64, MSVC) there is one copy, compiled for the platform's baseline.
#
# Every copy does the same IEEE operations in the same order, lane by lane: a multiply, then an
# add, never fused (MG_NOFUSE / MG_STRICT below say so in the code itself, whatever the command
# line: clang's target("avx512f") brings FMA and clang contracts by default; setup.py's
# -ffp-contract=off says it again), each lane one sum or one gradient. So the copies give the
# same bits as one another, as the scalar code and as the reference engine; only how many lanes
# run at once differs. MICHIGRAD_VECTOR_ISA=sse2|avx2|avx512f (read at import) caps the choice
# (for comparisons: the widest copy this machine runs up to that one); _vector_isa() and
# _set_vector_isa() read and set it at run time (for tests).
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    /* GCC's -O2 vectorizes only loops whose trip count is a known multiple of the vector width:
       let these pay for an epilogue (clang and MSVC vectorize them at their default level) */
    #define MG_VECTORIZE __attribute__((optimize("vect-cost-model=dynamic", "fp-contract=off")))
    #define MG_STRICT __attribute__((optimize("fp-contract=off")))
    #else
    #define MG_VECTORIZE
    #define MG_STRICT
    #endif

    /* Never a fused multiply-add, whatever the command line: clang's target("avx512f") brings
       FMA with it and clang contracts by default (-ffp-contract=on); GCC's optimize attributes
       above restate -ffp-contract=off. MSVC: x64's baseline has no FMA (and /fp:precise of VS
       2022 does not contract). */
    #if defined(__clang__)
    #define MG_NOFUSE _Pragma("clang fp contract(off)")
    #else
    #define MG_NOFUSE
    #endif

    /* C99's restrict is not a keyword in MSVC's default C mode (only with /std:c11 or later) */
    #if defined(__GNUC__) || defined(__clang__)
    #define MG_RESTRICT __restrict__
    #elif defined(_MSC_VER)
    #define MG_RESTRICT __restrict
    #else
    #define MG_RESTRICT restrict
    #endif

    /* MG_BASELINE_ONLY: build the one-copy variant of other platforms (to test it on x86-64) */
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(MG_BASELINE_ONLY)
    #define MG_X86_COPIES 1
    #define MG_TARGET_AVX2 __attribute__((target("avx2")))
    #define MG_TARGET_AVX512 __attribute__((target("avx512f")))
    #else
    #define MG_X86_COPIES 0
    #endif

    /* y[k] += x[k] * g: one output's contributions into one copied row of gradients (y), from
       the other row's copied data (x). y is a row of the gradients' buffer, x of the data's. */
    #define MG_DEFINE_AXPY(NAME, TARGET)                                                          \\
    TARGET MG_VECTORIZE static void NAME(double* MG_RESTRICT y, const double* MG_RESTRICT x,      \\
                                         double g, Py_ssize_t m)                                  \\
    { MG_NOFUSE                                                                                   \\
        for (Py_ssize_t k = 0; k < m; k++)                                                        \\
            y[k] = y[k] + x[k] * g;                                                               \\
    }

    /* mg_axpy for four outputs, in order, into the row y they share: y[k] is loaded and stored
       once for the four, and receives their contributions one after the other. */
    #define MG_DEFINE_AXPY4(NAME, TARGET)                                                         \\
    TARGET MG_VECTORIZE static void NAME(double* MG_RESTRICT y,                                   \\
        const double* MG_RESTRICT x0, double g0, const double* MG_RESTRICT x1, double g1,         \\
        const double* MG_RESTRICT x2, double g2, const double* MG_RESTRICT x3, double g3,         \\
        Py_ssize_t m)                                                                             \\
    { MG_NOFUSE                                                                                   \\
        for (Py_ssize_t k = 0; k < m; k++)                                                        \\
            y[k] = (((y[k] + x0[k] * g0) + x1[k] * g1) + x2[k] * g2) + x3[k] * g3;                \\
    }

    /* mg_axpy4 into the shared row s, and mg_axpy from s into each of the four outputs' own
       rows o0..o3 (distinct), in one pass: s is loaded once for both. */
    #define MG_DEFINE_AXPY4_BOTH(NAME, TARGET)                                                    \\
    TARGET MG_VECTORIZE static void NAME(double* MG_RESTRICT sg, const double* MG_RESTRICT sd,    \\
        double* MG_RESTRICT og0, const double* MG_RESTRICT od0, double g0,                        \\
        double* MG_RESTRICT og1, const double* MG_RESTRICT od1, double g1,                        \\
        double* MG_RESTRICT og2, const double* MG_RESTRICT od2, double g2,                        \\
        double* MG_RESTRICT og3, const double* MG_RESTRICT od3, double g3, Py_ssize_t m)          \\
    { MG_NOFUSE                                                                                   \\
        for (Py_ssize_t k = 0; k < m; k++) {                                                      \\
            double s = sd[k];                                                                     \\
            sg[k] = (((sg[k] + od0[k] * g0) + od1[k] * g1) + od2[k] * g2) + od3[k] * g3;          \\
            og0[k] = og0[k] + s * g0;                                                             \\
            og1[k] = og1[k] + s * g1;                                                             \\
            og2[k] = og2[k] + s * g2;                                                             \\
            og3[k] = og3[k] + s * g3;                                                             \\
        }                                                                                         \\
    }

    /* v[j] += w[0]*x[0], then += w[1]*x[1], ... for `width` (a multiple of 8) outputs of one
       output row of a matmul, which all read the same operand row `shared` (their w row or
       their x row), and each its own other row, stored transposed: element k of output j's row
       is columns[k * stride + j]. linear_value's float sum: the same operations and order, so
       the same bits (a product's operand order does not matter: IEEE multiplication commutes).
       Side by side because each sum is a chain of dependent additions that alone leaves the
       FPU mostly idle: the sums are the lanes of vectors of the ISA's width (GCC's and clang's
       vector extension), four independent chains at a time where there are enough outputs,
       then two, then one.
       The accumulators are named, not an array: GCC at -O2 would keep an array in memory. */
    #if defined(__GNUC__) || defined(__clang__)
    #define MG_LOAD(vec, p) memcpy(&(vec), (p), sizeof(vec))  /* an unaligned vector load */
    #define MG_DEFINE_DOTS(NAME, TARGET, VEC, LANES)                                              \\
    typedef double VEC __attribute__((vector_size(8 * LANES)));                                   \\
    TARGET MG_STRICT static void NAME(const double* MG_RESTRICT shared,                           \\
                                      const double* MG_RESTRICT columns, Py_ssize_t stride,       \\
                                      double* MG_RESTRICT v, Py_ssize_t m, int width)             \\
    { MG_NOFUSE                                                                                   \\
        VEC a0, a1, a2, a3, r;                                                                    \\
        double* out = v;                                                                          \\
        const double* col = columns;                                                              \\
        for (; out + 4 * LANES <= v + width; out += 4 * LANES, col += 4 * LANES) {                \\
            MG_LOAD(a0, out); MG_LOAD(a1, out + LANES);                                           \\
            MG_LOAD(a2, out + 2 * LANES); MG_LOAD(a3, out + 3 * LANES);                           \\
            for (Py_ssize_t k = 0; k < m; k++) {                                                  \\
                const double c = shared[k];                                                       \\
                const double* row = col + k * stride;                                             \\
                MG_LOAD(r, row); a0 = a0 + c * r;                                                 \\
                MG_LOAD(r, row + LANES); a1 = a1 + c * r;                                         \\
                MG_LOAD(r, row + 2 * LANES); a2 = a2 + c * r;                                     \\
                MG_LOAD(r, row + 3 * LANES); a3 = a3 + c * r;                                     \\
            }                                                                                     \\
            memcpy(out, &a0, sizeof a0); memcpy(out + LANES, &a1, sizeof a1);                     \\
            memcpy(out + 2 * LANES, &a2, sizeof a2); memcpy(out + 3 * LANES, &a3, sizeof a3);     \\
        }                                                                                         \\
        if (out + 2 * LANES <= v + width) {                                                       \\
            MG_LOAD(a0, out); MG_LOAD(a1, out + LANES);                                           \\
            for (Py_ssize_t k = 0; k < m; k++) {                                                  \\
                const double c = shared[k];                                                       \\
                const double* row = col + k * stride;                                             \\
                MG_LOAD(r, row); a0 = a0 + c * r;                                                 \\
                MG_LOAD(r, row + LANES); a1 = a1 + c * r;                                         \\
            }                                                                                     \\
            memcpy(out, &a0, sizeof a0); memcpy(out + LANES, &a1, sizeof a1);                     \\
            out += 2 * LANES;                                                                     \\
            col += 2 * LANES;                                                                     \\
        }                                                                                         \\
        for (; out + LANES <= v + width; out += LANES, col += LANES) {                            \\
            MG_LOAD(a0, out);                                                                     \\
            for (Py_ssize_t k = 0; k < m; k++) {                                                  \\
                MG_LOAD(r, col + k * stride);                                                     \\
                a0 = a0 + shared[k] * r;                                                          \\
            }                                                                                     \\
            memcpy(out, &a0, sizeof a0);                                                          \\
        }                                                                                         \\
    }
    #else  /* the same sums, one double at a time */
    #define MG_DEFINE_DOTS(NAME, TARGET, VEC, LANES)                                              \\
    static void NAME(const double* shared, const double* columns, Py_ssize_t stride,              \\
                     double* v, Py_ssize_t m, int width)                                          \\
    { MG_NOFUSE                                                                                   \\
        for (Py_ssize_t k = 0; k < m; k++)                                                        \\
            for (int j = 0; j < width; j++)                                                       \\
                v[j] = v[j] + shared[k] * columns[k * stride + j];                                \\
    }
    #endif

    /* One set of kernels per ISA; mg_kernels points at the set in use. */
    typedef struct {
        const char* isa;
        void (*axpy)(double*, const double*, double, Py_ssize_t);
        void (*axpy4)(double*, const double*, double, const double*, double, const double*,
                      double, const double*, double, Py_ssize_t);
        void (*axpy4_both)(double*, const double*, double*, const double*, double, double*,
                           const double*, double, double*, const double*, double, double*,
                           const double*, double, Py_ssize_t);
        void (*dots)(const double*, const double*, Py_ssize_t, double*, Py_ssize_t, int);
    } mg_kernel_set;

    #define MG_DEFINE_SET(SET, ISA, TARGET, LANES)                                                \\
    MG_DEFINE_AXPY(mg_axpy_##SET, TARGET)                                                         \\
    MG_DEFINE_AXPY4(mg_axpy4_##SET, TARGET)                                                       \\
    MG_DEFINE_AXPY4_BOTH(mg_axpy4_both_##SET, TARGET)                                             \\
    MG_DEFINE_DOTS(mg_dots_##SET, TARGET, mg_vec_##SET, LANES)                                    \\
    static const mg_kernel_set mg_set_##SET = {ISA, mg_axpy_##SET, mg_axpy4_##SET,                \\
                                               mg_axpy4_both_##SET, mg_dots_##SET};

    #if MG_X86_COPIES
    MG_DEFINE_SET(base, "sse2", , 2)
    MG_DEFINE_SET(avx2, "avx2", MG_TARGET_AVX2, 4)
    MG_DEFINE_SET(avx512, "avx512f", MG_TARGET_AVX512, 8)
    static const mg_kernel_set* const mg_sets[] = {&mg_set_base, &mg_set_avx2, &mg_set_avx512};
    #else
    /* one copy for the platform's baseline (aarch64: NEON's two doubles) */
    MG_DEFINE_SET(base, "baseline", , 2)
    static const mg_kernel_set* const mg_sets[] = {&mg_set_base};
    #endif

    static const mg_kernel_set* mg_kernels = &mg_set_base;

    /* The sets this CPU and OS can run: 1 + the index of the widest (the OS must save the
       wider registers too: __builtin_cpu_supports checks that). */
    static int mg_supported_sets(void)
    {
    #if MG_X86_COPIES
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            return 3;
        if (__builtin_cpu_supports("avx2"))
            return 2;
    #endif
        return 1;
    }

    /* Use set `index`; -1 when this CPU cannot run it. */
    static int mg_use_set(int index)
    {
        if (index < 0 || index >= mg_supported_sets())
            return -1;
        mg_kernels = mg_sets[index];
        return 0;
    }

    static const char* mg_set_isa(int index) { return mg_sets[index]->isa; }

    static const char* mg_isa_in_use(void) { return mg_kernels->isa; }

    static inline void mg_axpy(double* y, const double* x, double g, Py_ssize_t m)
    {
        mg_kernels->axpy(y, x, g, m);
    }

    static inline void mg_axpy4(double* y, const double* x0, double g0, const double* x1,
                                double g1, const double* x2, double g2, const double* x3,
                                double g3, Py_ssize_t m)
    {
        mg_kernels->axpy4(y, x0, g0, x1, g1, x2, g2, x3, g3, m);
    }

    static inline void mg_axpy4_both(double* sg, const double* sd, double* og0,
        const double* od0, double g0, double* og1, const double* od1, double g1, double* og2,
        const double* od2, double g2, double* og3, const double* od3, double g3, Py_ssize_t m)
    {
        mg_kernels->axpy4_both(sg, sd, og0, od0, g0, og1, od1, g1, og2, od2, g2, og3, od3, g3, m);
    }

    static inline void mg_dots(const double* shared, const double* columns, Py_ssize_t stride,
                               double* v, Py_ssize_t m, int width)
    {
        mg_kernels->dots(shared, columns, stride, v, m, width);
    }
    """
    int mg_supported_sets() noexcept nogil
    int mg_use_set(int index) noexcept nogil
    const char* mg_set_isa(int index) noexcept nogil
    const char* mg_isa_in_use() noexcept nogil
    void mg_axpy(double* y, const double* x, double g, Py_ssize_t m) noexcept nogil
    void mg_axpy4(double* y, const double* x0, double g0, const double* x1, double g1,
                  const double* x2, double g2, const double* x3, double g3, Py_ssize_t m) noexcept nogil
    void mg_axpy4_both(double* sg, const double* sd, double* og0, const double* od0, double g0,
                       double* og1, const double* od1, double g1, double* og2, const double* od2,
                       double g2, double* og3, const double* od3, double g3, Py_ssize_t m) noexcept nogil
    void mg_dots(const double* shared, const double* columns, Py_ssize_t stride, double* v,
                 Py_ssize_t m, int width) noexcept nogil


def _vector_isa():
    """The instruction set of the vector kernels in use ('sse2', 'avx2', 'avx512f'; 'baseline'
    where there is one copy), and those this machine can run, narrowest first."""
    return mg_isa_in_use().decode(), supported_isas()


cdef list supported_isas():
    """The names of the kernel sets this machine runs, narrowest first: set k is the k-th."""
    cdef int index
    return [mg_set_isa(index).decode() for index in range(mg_supported_sets())]


def _set_vector_isa(str isa):
    """Run the vector kernels of `isa` (one of _vector_isa()[1]): every set gives the same bits,
    so only the speed changes. For tests and benchmarks."""
    supported = supported_isas()
    if isa not in supported:
        raise ValueError(f"michigrad: vector kernels {isa!r} are not ones this machine runs "
                         f"(it runs {supported})")
    mg_use_set(supported.index(isa))


# MICHIGRAD_VECTOR_ISA's values, narrowest first: a cap picks the widest copy this machine runs
# up to it (on a machine with one copy, that copy)
cdef tuple ISA_CAPS = ("sse2", "avx2", "avx512f")


cdef int init_vector_kernels() except -1:
    """The widest kernel set this machine runs, capped by MICHIGRAD_VECTOR_ISA if set."""
    import os
    cdef int widest = mg_supported_sets() - 1
    cap = os.environ.get("MICHIGRAD_VECTOR_ISA", "").strip().lower()
    if cap and cap not in ISA_CAPS:
        raise ValueError(f"michigrad: MICHIGRAD_VECTOR_ISA={cap!r} is not one of "
                         f"{', '.join(ISA_CAPS)} (it caps the vector kernels' instruction set)")
    mg_use_set(min(widest, ISA_CAPS.index(cap)) if cap else widest)
    return 0


init_vector_kernels()
