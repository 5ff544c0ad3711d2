/*
 * revision.kernels._native: the CPU row kernels of ReAlign's three passes, one memory sweep each.
 *
 * The torch CPU path runs every elementary step (fp16 -> fp32, norm, scale, float64 copy, column
 * sums, squares) as its own sweep over a cached tile; these loops do all steps on one row while it
 * sits in L1, so a pass costs about one read of its input. The per-row arithmetic is the torch
 * path's, step for step (fp32 rows, fp32 norms, the float64 reference rule for rows outside the
 * fast range), and all sums are float64.
 *
 * Reproducibility: a row's values depend only on the row. Sums of squares use 64 fixed lanes
 * combined in a fixed order and floating-point contraction is off (-ffp-contract=off), so every
 * instruction-set clone below produces the same bits. Sums over rows go through blocks of
 * BLOCK_ROWS rows, merged in order; the caller merges parts in row order.
 *
 * Every entry point takes raw addresses (from torch's data_ptr, checked by kernels/native.py) and
 * releases the GIL, so the caller's threads run parts of a chunk in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef __FLT16_MAX__
#error "revision's native kernels need the _Float16 type (GCC >= 12 or Clang >= 15)"
#endif

/* One clone per x86-64 level: AVX-512 and AVX2/F16C where the CPU has them, baseline SSE2 else. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

#define LANES 64
#define BLOCK_ROWS 256

/* The torch path's fast range (kernels/rows_cpu.py): inside it a row is scaled by 1/||x||. */
static const double NORM_LOW = 1e-9;
static const double NORM_HIGH = 1e18;
/* The reference rule leaves rows with a norm below this unscaled (kernels/unit_rule.py). */
static const double NORM_FLOOR = 1e-10;

/* Type punning goes through memcpy only. A float written through a uint32_t * (or read back as one)
 * is undefined behaviour that GCC at -O3 may exploit, moving the integer stores past the float loads
 * that read them; and a 16-bit load through a uint16_t * is undefined at an odd address, which a
 * tensor over a packed numpy buffer can have. GCC turns these memcpy calls into plain (vector)
 * loads and stores. */
static inline float float_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t load_u16(const char *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Decodes n values starting at element j0 of a row (any address) into out[j0 …]. */
static inline void decode(const char *src, int dt, int64_t j0, int64_t n, float *restrict out) {
    if (dt == DT_F32) {
        memcpy(out + j0, src + j0 * (int64_t)sizeof(float), (size_t)n * sizeof(float));
    } else if (dt == DT_F16) {
        /* Bit arithmetic rather than a _Float16 cast: GCC has no vector mode for the cast without
         * AVX512-FP16 and calls a library routine per value; this loop vectorises on any level. */
        const char *h = src + j0 * 2;
        for (int64_t j = 0; j < n; j++) {
            uint32_t bits = load_u16(h + 2 * j);
            uint32_t em = bits & 0x7FFFu;
            uint32_t normal = (em << 13) + (112u << 23);      /* rebias the exponent: 15 -> 127 */
            uint32_t special = (em << 13) | 0x7F800000u;      /* Inf, NaN (payload kept) */
            float subf = (float)(int32_t)em * 0x1p-24f;       /* subnormal: exact */
            uint32_t sub;
            memcpy(&sub, &subf, sizeof sub);
            uint32_t is_special = 0u - (uint32_t)(em >= 0x7C00u), is_sub = 0u - (uint32_t)(em < 0x0400u);
            uint32_t mag = (special & is_special) | (sub & is_sub) | (normal & ~(is_special | is_sub));
            out[j0 + j] = float_from_bits(mag | ((bits & 0x8000u) << 16));
        }
    } else {
        const char *b = src + j0 * 2;
        for (int64_t j = 0; j < n; j++) out[j0 + j] = float_from_bits(load_u16(b + 2 * j) << 16);
    }
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);                                            /* nearest, ties to even */
    return (uint16_t)(u >> 16);
}

/* The sums of squares below all use LANES fixed lanes (value j goes to lane j mod LANES from the
 * row's start, the tail from lane 0) and one fixed pairwise combination: the same bits whichever
 * loop computes them and whatever the vector width. */
static inline float combine_lanes(float *acc) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) acc[k] += acc[k + w];
    return acc[0];
}

/* Decodes a row into out and returns its sum of squares, one span of LANES values at a time. */
static inline float load_row(const char *src, int dt, int64_t d, float *restrict out) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES) {
        decode(src, dt, j, LANES, out);
        for (int k = 0; k < LANES; k++) acc[k] += out[j + k] * out[j + k];
    }
    decode(src, dt, j, d - j, out);
    for (int k = 0; j < d; j++, k++) acc[k] += out[j] * out[j];
    return combine_lanes(acc);
}

/* x[j] = base[j] + x[j] * c in place; returns the new row's sum of squares. */
static inline float axpy_sumsq(float *restrict x, const float *restrict base, float c, int64_t d) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES)
        for (int k = 0; k < LANES; k++) {
            float v = base[j + k] + x[j + k] * c;
            x[j + k] = v;
            acc[k] += v * v;
        }
    for (int k = 0; j < d; j++, k++) {
        float v = base[j] + x[j] * c;
        x[j] = v;
        acc[k] += v * v;
    }
    return combine_lanes(acc);
}

/* 1/||x|| from the sum of squares when the norm is in the fast range, else 0 (NaN fails both). */
static inline float fast_inverse(float sumsq) {
    float norm = sqrtf(sumsq);
    return ((double)norm >= NORM_LOW && (double)norm <= NORM_HIGH) ? 1.0f / norm : 0.0f;
}


/* The reference rule in float64, in place: non-finite -> 0, scale by the max-abs, then the norm. */
static void unit_rule_row(float *x, int64_t d) {
    double m = 0.0;
    for (int64_t j = 0; j < d; j++) {
        double v = isfinite(x[j]) ? (double)x[j] : 0.0;
        if (fabs(v) > m) m = fabs(v);
    }
    double safe = m > 0.0 ? m : 1.0;
    double zs = 0.0;
    for (int64_t j = 0; j < d; j++) {
        double z = (isfinite(x[j]) ? (double)x[j] : 0.0) / safe;
        zs += z * z;
    }
    double zn = sqrt(zs);
    int keep = zn * safe < NORM_FLOOR;
    double div = zn > 0.0 ? zn : 1.0;
    for (int64_t j = 0; j < d; j++) {
        double v = isfinite(x[j]) ? (double)x[j] : 0.0;
        x[j] = keep ? (float)v : (float)((v / safe) / div);
    }
}

/* 1 when a row (outside the fast range) holds NaN/±Inf or only zeros: strict mode's bad rows. */
static int bad_row(const float *x, int64_t d) {
    int nonzero = 0;
    for (int64_t j = 0; j < d; j++) {
        if (!isfinite(x[j])) return 1;
        if (x[j] != 0.0f) nonzero = 1;
    }
    return !nonzero;
}

/* The factor that makes x a unit row by the torch path's rule (x * r, rounded to fp32); rows outside
 * the fast range are replaced in place by their reference-rule unit rows and get r = 1. Returns 0
 * for a bad row when screening. */
static inline float unit_factor(float *restrict x, int64_t d, float sumsq, int screen) {
    float r = fast_inverse(sumsq);
    if (r != 0.0f) return r;
    if (screen && bad_row(x, d)) return 0.0f;
    unit_rule_row(x, d);
    return 1.0f;
}

/* The projected row h = u(offset + s * u(x)) as the torch path computes it, from a row and its sum of
 * squares: fp32 h in place, returns its unit factor. */
static inline float project_row(float *restrict x, int64_t d, float sumsq, const float *restrict offset, float s) {
    float r = unit_factor(x, d, sumsq, 0);
    return unit_factor(x, d, axpy_sumsq(x, offset, r * s, d), 0);
}

typedef struct {
    int64_t count;
    double *mean, *m2, *total; /* total: column sums, so the caller's mean is one rounding of a sum */
} moments_t;

/* Rows go through the float64 sums GROUP at a time: one load and store of each sum per group
 * instead of per row (the sums' traffic, not the arithmetic, bounds these loops). */
#define GROUP 4

/* Moments of rows [0, n): returns -1, or the first bad row when screening (nothing merged then).
 * rows: GROUP * d floats of scratch. */
CLONES static int64_t moments_rows(const char *base, int dt, int64_t stride, int64_t n, int64_t d, int normalize,
                                   int screen, moments_t *acc, float *restrict rows, float *restrict shift,
                                   double *restrict s, double *restrict q) {
    /* restrict, not type-based aliasing, tells GCC the sums never overlap the rows, so these loops
     * vectorise under -fno-strict-aliasing too. */
    double *restrict mean = acc->mean, *restrict m2 = acc->m2, *restrict total = acc->total;
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK_ROWS) {
        int64_t b1 = b0 + BLOCK_ROWS < n ? b0 + BLOCK_ROWS : n;
        int64_t nb = b1 - b0;
        for (int64_t g0 = b0; g0 < b1; g0 += GROUP) {
            int64_t gn = b1 - g0 < GROUP ? b1 - g0 : GROUP;
            /* Each row's unit factor is applied inside the sums loop (the same fp32 product as a scaling
             * pass, without the extra sweep over the row). */
            float f[GROUP];
            for (int64_t r = 0; r < GROUP; r++) {
                float *row = rows + r * d;
                if (r >= gn) {
                    memcpy(row, shift, (size_t)d * sizeof(float)); /* padding: adds exactly 0 */
                    f[r] = 1.0f;
                    continue;
                }
                float sumsq = load_row(base + (g0 + r) * stride, dt, d, row);
                f[r] = 1.0f;
                if (normalize) {
                    f[r] = unit_factor(row, d, sumsq, screen);
                    if (f[r] == 0.0f) return g0 + r;
                } else if (screen && fast_inverse(sumsq) == 0.0f && bad_row(row, d)) {
                    return g0 + r;
                }
                /* Sums about the block's first row: float64 differences of fp32 values are exact, and
                 * the shift keeps Σq − (Σs)²/n free of cancellation when a column's mean dwarfs its spread. */
                if (g0 == b0 && r == 0) {
                    for (int64_t j = 0; j < d; j++) shift[j] = row[j] * f[0];
                    memset(s, 0, (size_t)d * sizeof(double));
                    memset(q, 0, (size_t)d * sizeof(double));
                }
            }
            const float *x0 = rows, *x1 = rows + d, *x2 = rows + 2 * d, *x3 = rows + 3 * d;
            const float f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3];
            for (int64_t j = 0; j < d; j++) {
                double c = (double)shift[j];
                double a0 = (double)(x0[j] * f0) - c, a1 = (double)(x1[j] * f1) - c;
                double a2 = (double)(x2[j] * f2) - c, a3 = (double)(x3[j] * f3) - c;
                s[j] += (a0 + a1) + (a2 + a3);
                q[j] += (a0 * a0 + a1 * a1) + (a2 * a2 + a3 * a3);
            }
        }
        double w_new = (double)nb / (double)(acc->count + nb);
        double w_cross = (double)acc->count * w_new;
        for (int64_t j = 0; j < d; j++) {
            double bm2 = q[j] - s[j] * (s[j] / (double)nb);
            if (bm2 < 0.0) bm2 = 0.0;
            /* The block's mean as its sum over its count: nb · shift is exact and so, for rows of like
             * magnitude, is the sum, so one rounding — the same mean a plain sum gives. (Shift + Σ/nb
             * rounds twice, and flips float32 ties when the means are rounded to fp32 later.) */
            double bsum = (double)nb * (double)shift[j] + s[j];
            double bmean = bsum / (double)nb;
            double delta = bmean - mean[j];
            total[j] += bsum;
            mean[j] += delta * w_new;
            m2[j] += bm2 + delta * delta * w_cross;
        }
        acc->count += nb;
    }
    return -1;
}

/* Adds Σ over rows of the unit projected rows to sum. rows: GROUP * d floats of scratch. */
CLONES static void centroid_rows(const char *base, int dt, int64_t stride, int64_t n, int64_t d,
                                 const float *offset, float s, double *sum, float *rows, double *block) {
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK_ROWS) {
        int64_t b1 = b0 + BLOCK_ROWS < n ? b0 + BLOCK_ROWS : n;
        memset(block, 0, (size_t)d * sizeof(double));
        for (int64_t g0 = b0; g0 < b1; g0 += GROUP) {
            int64_t gn = b1 - g0 < GROUP ? b1 - g0 : GROUP;
            double w[GROUP];
            for (int64_t r = 0; r < GROUP; r++) {
                float *row = rows + r * d;
                if (r >= gn) {
                    memset(row, 0, (size_t)d * sizeof(float)); /* padding: weight 0 */
                    w[r] = 0.0;
                    continue;
                }
                float sumsq = load_row(base + (g0 + r) * stride, dt, d, row);
                w[r] = (double)project_row(row, d, sumsq, offset, s);
            }
            const float *h0 = rows, *h1 = rows + d, *h2 = rows + 2 * d, *h3 = rows + 3 * d;
            for (int64_t j = 0; j < d; j++)
                block[j] += ((double)h0[j] * w[0] + (double)h1[j] * w[1]) + ((double)h2[j] * w[2] + (double)h3[j] * w[3]);
        }
        for (int64_t j = 0; j < d; j++) sum[j] += block[j];
    }
}

/* Writes the aligned rows, contiguous, to out (any address: stores go through memcpy). */
CLONES static void apply_rows(const char *base, int dt, int64_t stride, int64_t n, int64_t d, const float *offset,
                              float s, const float *shift, char *out, int out_dt, float *row) {
    const int64_t item = out_dt == DT_F32 ? 4 : 2;
    for (int64_t i = 0; i < n; i++) {
        float sumsq = load_row(base + i * stride, dt, d, row);
        float r2 = project_row(row, d, sumsq, offset, s);
        float r3 = unit_factor(row, d, axpy_sumsq(row, shift, r2, d), 0);
        char *o = out + i * d * item;
        if (out_dt == DT_F32) {
            for (int64_t j = 0; j < d; j++) {
                float v = row[j] * r3;
                memcpy(o + 4 * j, &v, sizeof v);
            }
        } else if (out_dt == DT_F16) {
            for (int64_t j = 0; j < d; j++) {
                _Float16 v = (_Float16)(row[j] * r3);
                memcpy(o + 2 * j, &v, sizeof v);
            }
        } else {
            for (int64_t j = 0; j < d; j++) {
                uint16_t v = f32_to_bf16(row[j] * r3);
                memcpy(o + 2 * j, &v, sizeof v);
            }
        }
    }
}

/* ---- Python bindings ------------------------------------------------------------------------- */

static int check_args(int dt, int64_t n, int64_t d, int64_t stride) {
    if (dt != DT_F32 && dt != DT_F16 && dt != DT_BF16) {
        PyErr_Format(PyExc_ValueError, "unknown dtype code %d", dt);
        return -1;
    }
    int64_t item = dt == DT_F32 ? 4 : 2;
    if (n < 0 || d < 1 || stride < d * item) {
        PyErr_Format(PyExc_ValueError, "bad shape: n=%lld d=%lld row stride=%lld bytes", (long long)n, (long long)d,
                     (long long)stride);
        return -1;
    }
    return 0;
}

static void *scratch(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) PyErr_NoMemory();
    return p;
}

/* moments(x, dtype, n, d, row_stride_bytes, normalize, screen, count_in, mean_ptr, m2_ptr, total_ptr)
 *   -> (count, bad_row): merges rows into the float64 state (count_in, mean, m2, total) in place;
 *   bad_row is -1, or the first bad row (screening), in which case the state is unspecified. */
static PyObject *py_moments(PyObject *self, PyObject *args) {
    unsigned long long xp, mp, qp, tp;
    int dt, normalize, screen;
    long long n, d, stride, count;
    if (!PyArg_ParseTuple(args, "KiLLLppLKKK", &xp, &dt, &n, &d, &stride, &normalize, &screen, &count, &mp, &qp,
                          &tp))
        return NULL;
    if (check_args(dt, n, d, stride) < 0) return NULL;
    float *row = scratch((size_t)d * (GROUP + 1) * sizeof(float));
    double *sq = row ? scratch((size_t)d * 2 * sizeof(double)) : NULL;
    if (!sq) {
        free(row);
        return NULL;
    }
    moments_t acc = {count, (double *)(uintptr_t)mp, (double *)(uintptr_t)qp, (double *)(uintptr_t)tp};
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS;
    bad = moments_rows((const char *)(uintptr_t)xp, dt, stride, n, d, normalize, screen, &acc, row, row + GROUP * d, sq,
                       sq + d);
    Py_END_ALLOW_THREADS;
    free(row);
    free(sq);
    return Py_BuildValue("LL", (long long)acc.count, (long long)bad);
}

/* centroid(x, dtype, n, d, row_stride_bytes, offset_f32_ptr, s, sum_f64_ptr): adds Σ h to sum. */
static PyObject *py_centroid(PyObject *self, PyObject *args) {
    unsigned long long xp, op, sp;
    int dt;
    long long n, d, stride;
    float s;
    if (!PyArg_ParseTuple(args, "KiLLLKfK", &xp, &dt, &n, &d, &stride, &op, &s, &sp)) return NULL;
    if (check_args(dt, n, d, stride) < 0) return NULL;
    float *row = scratch((size_t)d * GROUP * sizeof(float));
    double *block = row ? scratch((size_t)d * sizeof(double)) : NULL;
    if (!block) {
        free(row);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    centroid_rows((const char *)(uintptr_t)xp, dt, stride, n, d, (const float *)(uintptr_t)op, s,
                  (double *)(uintptr_t)sp, row, block);
    Py_END_ALLOW_THREADS;
    free(row);
    free(block);
    Py_RETURN_NONE;
}

/* apply(x, dtype, n, d, row_stride_bytes, offset_f32_ptr, s, shift_f32_ptr, out_ptr, out_dtype):
 * writes the n aligned rows, contiguous, to out. */
static PyObject *py_apply(PyObject *self, PyObject *args) {
    unsigned long long xp, op, hp, outp;
    int dt, out_dt;
    long long n, d, stride;
    float s;
    if (!PyArg_ParseTuple(args, "KiLLLKfKKi", &xp, &dt, &n, &d, &stride, &op, &s, &hp, &outp, &out_dt)) return NULL;
    if (check_args(dt, n, d, stride) < 0 || check_args(out_dt, n, d, d * (out_dt == DT_F32 ? 4 : 2)) < 0)
        return NULL;
    float *row = scratch((size_t)d * sizeof(float));
    if (!row) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    apply_rows((const char *)(uintptr_t)xp, dt, stride, n, d, (const float *)(uintptr_t)op, s,
               (const float *)(uintptr_t)hp, (char *)(uintptr_t)outp, out_dt, row);
    Py_END_ALLOW_THREADS;
    free(row);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", py_moments, METH_VARARGS, "Merge rows' count/mean/M2 (float64) into a state, in place."},
    {"centroid", py_centroid, METH_VARARGS, "Add the column sums of the projected rows h to a float64 vector."},
    {"apply", py_apply, METH_VARARGS, "Write ReAlign's aligned rows u(h - mu_hat + mu_i)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "ReAlign's fused CPU row kernels.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
