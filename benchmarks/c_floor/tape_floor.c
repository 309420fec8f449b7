/* The physical floor of a replayed training step: a plain C program that runs the SAME tape as
 * michigrad.Graph (exported by Graph.export_tape(), written to a text file by
 * benchmarks/bench_replay.py) forward, backward and SGD update, over flat arrays of doubles.
 *
 *   tape_floor TAPE_FILE STEPS          (built by bench_replay.py with gcc -O2 -ffp-contract=off)
 *
 * Node numbering is the tape's: leaves first, then the op nodes in forward order. Each step k:
 * lr = 1 - 0.9*k/100 (micrograd's demo schedule), forward every op node, zero the op nodes' and
 * the parameters' gradients, output gradient 1, every local backward in reverse order, then
 * p -= lr * grad(p). The arithmetic is micrograd's (and the engine's op table's) in the same order,
 * so the losses and parameters come out in the same bits as michigrad's replay; what this program
 * leaves out is Python's int/float bookkeeping and error checks.
 *
 * Prints "loss K HEX" per step and "param I HEX" at the end (C99 %a: exact), then
 * "ms_per_step MEDIAN MIN" over the timed steps.
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* op codes: src/michigrad/_engine.pxd (bench_replay.py checks they still match) */
enum { OP_ADD = 1, OP_MUL = 2, OP_POWC = 3, OP_EXP = 5, OP_LOG = 6, OP_TANH = 7, OP_RELU = 8,
       OP_SIGMOID = 9, OP_ABS = 10, OP_LINEAR = 12, OP_SUM = 13 };

static long read_long(FILE *f) {
    long v;
    if (fscanf(f, "%ld", &v) != 1) { fprintf(stderr, "tape_floor: bad tape file\n"); exit(2); }
    return v;
}

static double read_double(FILE *f) {
    double v;
    if (fscanf(f, "%lf", &v) != 1) { fprintf(stderr, "tape_floor: bad tape file\n"); exit(2); }
    return v;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "tape_floor: out of memory\n"); exit(2); }
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double sigmoid(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: tape_floor TAPE_FILE STEPS\n"); return 2; }
    FILE *f = fopen(argv[1], "r");
    if (!f) { perror(argv[1]); return 2; }
    long steps = atol(argv[2]);
    long n = read_long(f), nleaves = read_long(f), nkids = read_long(f), nparams = read_long(f);
    long output = read_long(f), nops = n - nleaves;
    double *val = xmalloc(n * sizeof(double)), *grad = xmalloc(n * sizeof(double));
    double *aux = xmalloc(nops * sizeof(double));
    int *op = xmalloc(nops * sizeof(int)), *kids = xmalloc(nkids * sizeof(int));
    long *start = xmalloc((nops + 1) * sizeof(long)), *params = xmalloc(nparams * sizeof(long));
    for (long i = 0; i < n; i++) val[i] = read_double(f);
    for (long i = 0; i < nops; i++) op[i] = (int)read_long(f);
    for (long i = 0; i < nops; i++) aux[i] = read_double(f);
    for (long i = 0; i <= nops; i++) start[i] = read_long(f);
    for (long i = 0; i < nkids; i++) kids[i] = (int)read_long(f);
    for (long i = 0; i < nparams; i++) params[i] = read_long(f);
    fclose(f);
    for (long i = 0; i < n; i++) grad[i] = 0.0;

    double *losses = xmalloc(steps * sizeof(double)), *ms = xmalloc(steps * sizeof(double));
    for (long k = 0; k < steps; k++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double lr = 1.0 - 0.9 * (double)k / 100.0;
        /* forward */
        for (long o = 0; o < nops; o++) {
            const int *c = kids + start[o];
            long m = start[o + 1] - start[o];
            double x = m > 0 ? val[c[0]] : 0.0, r;
            switch (op[o]) {
            case OP_ADD: r = x + val[c[1]]; break;
            case OP_MUL: r = x * val[c[1]]; break;
            case OP_POWC: r = pow(x, aux[o]); break;
            case OP_EXP: r = exp(x); break;
            case OP_LOG: r = log(x); break;
            case OP_TANH: r = tanh(x); break;
            case OP_RELU: r = x < 0.0 ? 0.0 : x; break;
            case OP_SIGMOID: r = sigmoid(x); break;
            case OP_ABS: r = fabs(x); break;
            case OP_LINEAR: {
                long bias = m & 1, h = m >> 1;
                double acc = bias ? val[c[0]] : 0.0;
                for (long i = 0; i < h; i++) acc = acc + val[c[bias + i]] * val[c[bias + h + i]];
                r = acc;
                break;
            }
            case OP_SUM: {  /* MLArray's sum: c0 + c1 + ... left to right */
                double acc = x;
                for (long i = 1; i < m; i++) acc = acc + val[c[i]];
                r = acc;
                break;
            }
            default: fprintf(stderr, "tape_floor: op %d not supported\n", op[o]); return 2;
            }
            val[nleaves + o] = r;
        }
        losses[k] = val[output];
        /* zero the op nodes' and the parameters' gradients; the output's is 1 */
        for (long i = nleaves; i < n; i++) grad[i] = 0.0;
        for (long i = 0; i < nparams; i++) grad[params[i]] = 0.0;
        grad[output] = 1.0;
        /* backward */
        for (long o = nops - 1; o >= 0; o--) {
            const int *c = kids + start[o];
            long m = start[o + 1] - start[o];
            double g = grad[nleaves + o], out = val[nleaves + o];
            switch (op[o]) {
            case OP_ADD: grad[c[0]] += g; grad[c[1]] += g; break;
            case OP_MUL: grad[c[0]] += val[c[1]] * g; grad[c[1]] += val[c[0]] * g; break;
            case OP_POWC: {
                double cst = aux[o];
                grad[c[0]] += (cst == 0.0 ? 0.0 : cst * pow(val[c[0]], cst - 1.0)) * g;
                break;
            }
            case OP_EXP: grad[c[0]] += out * g; break;
            case OP_LOG: grad[c[0]] += (1.0 / val[c[0]]) * g; break;
            case OP_TANH: grad[c[0]] += (1.0 - out * out) * g; break;
            case OP_RELU: grad[c[0]] += (double)(out > 0.0) * g; break;
            case OP_SIGMOID: grad[c[0]] += (out * (1.0 - out)) * g; break;
            case OP_ABS: {
                double x = val[c[0]];
                grad[c[0]] += (double)((x > 0.0) - (x < 0.0)) * g;
                break;
            }
            case OP_LINEAR: {
                long bias = m & 1, h = m >> 1;
                if (bias) grad[c[0]] += g;
                for (long i = 0; i < h; i++) {
                    int w = c[bias + i], x = c[bias + h + i];
                    grad[w] += val[x] * g;
                    grad[x] += val[w] * g;
                }
                break;
            }
            case OP_SUM: for (long i = 0; i < m; i++) grad[c[i]] += g; break;
            }
        }
        /* SGD */
        for (long i = 0; i < nparams; i++) val[params[i]] = val[params[i]] - lr * grad[params[i]];
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms[k] = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    }
    for (long k = 0; k < steps; k++) printf("loss %ld %a\n", k, losses[k]);
    for (long i = 0; i < nparams; i++) printf("param %ld %a\n", i, val[params[i]]);
    if (steps > 0) {
        qsort(ms, steps, sizeof(double), cmp_double);
        printf("ms_per_step %.6f %.6f\n", ms[steps / 2], ms[0]);
    }
    return 0;
}
