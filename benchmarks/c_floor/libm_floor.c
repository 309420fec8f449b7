/* What a created array node cannot cost less than, on this machine: the C floor of issue #5's
 * "ns per created node" (benchmarks/bench_arrays.py builds and runs this program).
 *
 *   libm_floor N REPS          (built with gcc -O2 -ffp-contract=off)
 *
 * Over N doubles in [-2, 2), each case's median over REPS runs, in ns per element:
 *   node64  read x[k], write a 64-byte record (the size of an engine node) holding it: the
 *           memory traffic of making one node, with no arithmetic;
 *   tanh, exp, pow  the libm functions Python's math.tanh, math.exp and float ** call, and so
 *           the ones the engine must call to give the same bits (pow with a run-time exponent
 *           2, as `x ** 2` calls it: gcc would turn a constant pow(x, 2.0) into x * x);
 *   tanh_shuffled, exp_shuffled, pow_shuffled  the same calls on the same values in a shuffled
 *           order, as bench_arrays.py's kernels get them (uniform random data): glibc's tanh
 *           branches on |x| >= 1 and on the sign, so an unsorted input mispredicts them (exp is
 *           branch-free). The ascending ramp above is the best case for the branch predictor.
 * Prints "CASE NS_PER_ELEMENT" lines.
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { double data, grad, aux; long long kids; int nkids; unsigned refcnt, mark;
                 unsigned short op, flags; void *handle, *extra; } Record;  /* 64 bytes */

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: libm_floor N REPS\n"); return 2; }
    long n = atol(argv[1]);
    int reps = atoi(argv[2]);
    volatile double exponent = 2.0;  /* run-time, as in Python */
    double *x = malloc(n * sizeof(double)), *y = malloc(n * sizeof(double));
    double *xs = malloc(n * sizeof(double));
    double *times = malloc(reps * sizeof(double));
    Record *nodes = malloc(n * sizeof(Record));
    if (!x || !y || !xs || !times || !nodes || reps < 1) { fprintf(stderr, "libm_floor: no memory\n"); return 2; }
    for (long k = 0; k < n; k++) x[k] = -2.0 + 4.0 * (double)k / (double)n;
    unsigned long long state = 88172645463325252ULL;  /* xorshift64: a fixed Fisher-Yates shuffle */
    for (long k = 0; k < n; k++) xs[k] = x[k];
    for (long k = n - 1; k > 0; k--) {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
        long j = (long)(state % (unsigned long long)(k + 1));
        double t = xs[k]; xs[k] = xs[j]; xs[j] = t;
    }
    memset(nodes, 0, n * sizeof(Record));
    const char *cases[] = {"node64", "tanh", "exp", "pow", "tanh_shuffled", "exp_shuffled",
                           "pow_shuffled"};
    double checksum = 0.0;
    for (int c = 0; c < 7; c++) {
        for (int r = 0; r < reps; r++) {
            double t0 = now_ns();
            double e = exponent;
            switch (c) {
            case 0:
                for (long k = 0; k < n; k++) {
                    Record *p = &nodes[k];
                    p->data = x[k]; p->grad = 0.0; p->aux = 0.0; p->kids = -1; p->nkids = 0;
                    p->refcnt = 1; p->mark = 0; p->op = 0; p->flags = 2; p->handle = 0; p->extra = 0;
                }
                break;
            case 1: for (long k = 0; k < n; k++) y[k] = tanh(x[k]); break;
            case 2: for (long k = 0; k < n; k++) y[k] = exp(x[k]); break;
            case 3: for (long k = 0; k < n; k++) y[k] = pow(x[k], e); break;
            case 4: for (long k = 0; k < n; k++) y[k] = tanh(xs[k]); break;
            case 5: for (long k = 0; k < n; k++) y[k] = exp(xs[k]); break;
            default: for (long k = 0; k < n; k++) y[k] = pow(xs[k], e); break;
            }
            times[r] = (now_ns() - t0) / (double)n;
            checksum += y[n / 2] + nodes[n / 3].data;
        }
        qsort(times, reps, sizeof(double), by_value);
        printf("%s %.2f\n", cases[c], times[reps / 2]);
    }
    fprintf(stderr, "checksum %g\n", checksum);  /* keeps the loops */
    return 0;
}
