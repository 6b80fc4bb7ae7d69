/* Host-operator kernels at memory speed: one pass over the tensor, SIMD where the CPU has it.
 *
 * Why C: numpy runs one pass per ufunc and moves an interleaved byte transpose one byte per
 * strided step; onnxruntime's QuantizeLinear works on four lanes at a time and its
 * Transpose is slow on narrow (W, 3) matrices. Each kernel here is one pass, bit-exact with
 * the numpy/onnxruntime semantics the operators are defined by (tests compare them element for
 * element), and releases the GIL. On x86-64 CPUs with AVX2 (2013 on) each kernel has an AVX2
 * version picked at run time; every kernel has a portable C version too.
 *
 * The Python side (client/ops/_native.py) checks shapes, dtypes and contiguity and allocates
 * the outputs; these functions only take byte buffers and sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NPUSIM_X86 1
#include <immintrin.h>
static int has_avx2, has_fma;
#endif

/* ---- Quantize: y = clamp(rint(x / scale) + zp, -128, 127), NaN -> -128 -------------------- */

static inline int8_t quantize_one(float x, float scale, float zp) {
    float v = nearbyintf(x / scale) + zp;  /* the default rounding mode: half to even */
    v = v >= -128.f ? v : -128.f;          /* written so NaN becomes -128, as MAXPS makes it */
    v = v <= 127.f ? v : 127.f;
    return (int8_t)(int)v;
}

static void quantize_c(const float *x, int8_t *y, Py_ssize_t n, float scale, float zp) {
    for (Py_ssize_t i = 0; i < n; i++) y[i] = quantize_one(x[i], scale, zp);
}

#ifdef NPUSIM_X86
/* Eight lanes at a time, four vectors packed into 32 bytes per step, without a division: a
 * divide-bound kernel (onnxruntime's, or this one with vdivps) costs ~20 % more here.
 *
 * Exact all the same, by Markstein's theorem: with inv = RN(1/scale) and q = RN(x * inv) within
 * an ulp of x / scale, the remainder e = x - q * scale is exact in one FMA and RN(q + e * inv) is
 * RN(x / scale), the quotient a division gives. The scale must keep 1/scale and the products
 * normal: the caller sends scales outside [2^-100, 2^100] to the portable kernel.
 *
 * Out-of-range and special values need no separate clamp: min(hi, x) caps large x (and +inf) at
 * 1024 * scale and keeps NaN (MINPS returns its second operand when one is NaN); a NaN, -inf or
 * a quotient below -2^31 converts to INT_MIN; the zero point is added in int16 with saturation
 * after the first pack, and the second pack saturates to int8: so NaN -> -128, +inf -> 127,
 * -inf -> -128, like the scalar version. */
__attribute__((target("avx2,fma")))
static void quantize_avx2(const float *x, int8_t *y, Py_ssize_t n, float scale, float zp) {
    const __m256 s = _mm256_set1_ps(scale), inv = _mm256_set1_ps(1.0f / scale);
    const __m256 hi = _mm256_set1_ps(1024.f * scale);
    const __m256i z = _mm256_set1_epi16((short)zp);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undo the packs' lane interleave */
    Py_ssize_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i r[4];
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_min_ps(hi, _mm256_loadu_ps(x + i + 8 * k));
            __m256 q = _mm256_mul_ps(v, inv);
            q = _mm256_fmadd_ps(_mm256_fnmadd_ps(q, s, v), inv, q);
            r[k] = _mm256_cvtps_epi32(q);  /* rounds half to even (the default MXCSR mode) */
        }
        __m256i lo16 = _mm256_adds_epi16(_mm256_packs_epi32(r[0], r[1]), z);
        __m256i hi16 = _mm256_adds_epi16(_mm256_packs_epi32(r[2], r[3]), z);
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo16, hi16), order));
    }
    quantize_c(x + i, y + i, n - i, scale, zp);
}
#endif

/* ---- Dequantize: y = (q - zp) * scale ------------------------------------------------------ */

static void dequantize_c(const int8_t *q, float *y, Py_ssize_t n, float scale, float zp) {
    for (Py_ssize_t i = 0; i < n; i++) y[i] = ((float)q[i] - zp) * scale;  /* the difference is exact */
}

#ifdef NPUSIM_X86
__attribute__((target("avx2")))
static void dequantize_avx2(const int8_t *q, float *y, Py_ssize_t n, float scale, float zp) {
    const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zp);
    Py_ssize_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(q + i));
        __m128i halves[2] = {_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)};
        for (int h = 0; h < 2; h++) {
            __m256i lo = _mm256_cvtepi8_epi32(halves[h]);
            __m256i hi = _mm256_cvtepi8_epi32(_mm_srli_si128(halves[h], 8));
            _mm256_storeu_ps(y + i + 16 * h, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(lo), z), s));
            _mm256_storeu_ps(y + i + 16 * h + 8, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(hi), z), s));
        }
    }
    dequantize_c(q + i, y + i, n - i, scale, zp);
}
#endif

/* ---- Lower / Unlower (and Pad / Slice, c = 1): m matrices of bytes (w, c) <-> (c, wp), wp >= w
 * padded with a value ---- */

static void planar_c(const uint8_t *src, uint8_t *dst, Py_ssize_t m, Py_ssize_t w, Py_ssize_t c, Py_ssize_t wp,
                     uint8_t pad) {
    if (c == 1) {  /* Pad: rows of w bytes widened to wp */
        for (Py_ssize_t k = 0; k < m; k++, src += w, dst += wp) {
            memcpy(dst, src, (size_t)w);
            memset(dst + w, pad, (size_t)(wp - w));
        }
        return;
    }
    for (Py_ssize_t k = 0; k < m; k++, src += w * c, dst += c * wp)
        for (Py_ssize_t ch = 0; ch < c; ch++) {
            uint8_t *d = dst + ch * wp;
            const uint8_t *s = src + ch;
            for (Py_ssize_t i = 0; i < w; i++) d[i] = s[i * c];
            memset(d + w, pad, (size_t)(wp - w));
        }
}

static void interleaved_c(const uint8_t *src, uint8_t *dst, Py_ssize_t m, Py_ssize_t w, Py_ssize_t c,
                          Py_ssize_t wp) {
    if (c == 1) {  /* Slice: the first w bytes of rows of wp */
        for (Py_ssize_t k = 0; k < m; k++, src += wp, dst += w) memcpy(dst, src, (size_t)w);
        return;
    }
    for (Py_ssize_t k = 0; k < m; k++, src += c * wp, dst += w * c)
        for (Py_ssize_t ch = 0; ch < c; ch++) {
            const uint8_t *s = src + ch * wp;
            uint8_t *d = dst + ch;
            for (Py_ssize_t i = 0; i < w; i++) d[i * c] = s[i];
        }
}

#ifdef NPUSIM_X86
/* Three channels, 16 pixels (48 bytes) per 16-byte lane: each plane gathers its bytes from the
 * three loaded vectors with one shuffle each (a -1 index writes zero) and ORs them together; an
 * AVX2 register does two such lanes, 32 pixels, with the same masks in both. */
#define X (-1)
static const int8_t RGB_TO_PLANE[3][3][16] = {
    {{0, 3, 6, 9, 12, 15, X, X, X, X, X, X, X, X, X, X}, {X, X, X, X, X, X, 2, 5, 8, 11, 14, X, X, X, X, X},
     {X, X, X, X, X, X, X, X, X, X, X, 1, 4, 7, 10, 13}},
    {{1, 4, 7, 10, 13, X, X, X, X, X, X, X, X, X, X, X}, {X, X, X, X, X, 0, 3, 6, 9, 12, 15, X, X, X, X, X},
     {X, X, X, X, X, X, X, X, X, X, X, 2, 5, 8, 11, 14}},
    {{2, 5, 8, 11, 14, X, X, X, X, X, X, X, X, X, X, X}, {X, X, X, X, X, 1, 4, 7, 10, 13, X, X, X, X, X, X},
     {X, X, X, X, X, X, X, X, X, X, 0, 3, 6, 9, 12, 15}},
};
/* PLANE_TO_RGB[out vector][plane]: which byte of each plane lands in each interleaved byte. */
static const int8_t PLANE_TO_RGB[3][3][16] = {
    {{0, X, X, 1, X, X, 2, X, X, 3, X, X, 4, X, X, 5}, {X, 0, X, X, 1, X, X, 2, X, X, 3, X, X, 4, X, X},
     {X, X, 0, X, X, 1, X, X, 2, X, X, 3, X, X, 4, X}},
    {{X, X, 6, X, X, 7, X, X, 8, X, X, 9, X, X, 10, X}, {5, X, X, 6, X, X, 7, X, X, 8, X, X, 9, X, X, 10},
     {X, 5, X, X, 6, X, X, 7, X, X, 8, X, X, 9, X, X}},
    {{X, 11, X, X, 12, X, X, 13, X, X, 14, X, X, 15, X, X}, {X, X, 11, X, X, 12, X, X, 13, X, X, 14, X, X, 15, X},
     {10, X, X, 11, X, X, 12, X, X, 13, X, X, 14, X, X, 15}},
};
#undef X

__attribute__((target("avx2")))
static void planar3_avx2(const uint8_t *src, uint8_t *dst, Py_ssize_t m, Py_ssize_t w, Py_ssize_t wp, uint8_t pad) {
    __m256i mask[3][3];
    for (int p = 0; p < 3; p++)
        for (int v = 0; v < 3; v++) mask[p][v] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)RGB_TO_PLANE[p][v]));
    for (Py_ssize_t k = 0; k < m; k++, src += w * 3, dst += 3 * wp) {
        Py_ssize_t i = 0;
        for (; i + 32 <= w; i += 32) {  /* lane 0: pixels i..i+15, lane 1: i+16..i+31 */
            const __m128i *s = (const __m128i *)(src + 3 * i);
            __m256i a = _mm256_loadu2_m128i(s + 3, s), b = _mm256_loadu2_m128i(s + 4, s + 1), c = _mm256_loadu2_m128i(s + 5, s + 2);
            for (int p = 0; p < 3; p++) {
                __m256i r = _mm256_or_si256(_mm256_or_si256(_mm256_shuffle_epi8(a, mask[p][0]), _mm256_shuffle_epi8(b, mask[p][1])),
                                            _mm256_shuffle_epi8(c, mask[p][2]));
                _mm256_storeu_si256((__m256i *)(dst + p * wp + i), r);
            }
        }
        for (int p = 0; p < 3; p++) {
            for (Py_ssize_t j = i; j < w; j++) dst[p * wp + j] = src[3 * j + p];
            memset(dst + p * wp + w, pad, (size_t)(wp - w));
        }
    }
}

__attribute__((target("avx2")))
static void interleaved3_avx2(const uint8_t *src, uint8_t *dst, Py_ssize_t m, Py_ssize_t w, Py_ssize_t wp) {
    __m256i mask[3][3];
    for (int v = 0; v < 3; v++)
        for (int p = 0; p < 3; p++) mask[v][p] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)PLANE_TO_RGB[v][p]));
    for (Py_ssize_t k = 0; k < m; k++, src += 3 * wp, dst += w * 3) {
        Py_ssize_t i = 0;
        for (; i + 32 <= w; i += 32) {
            __m256i r = _mm256_loadu_si256((const __m256i *)(src + i));
            __m256i g = _mm256_loadu_si256((const __m256i *)(src + wp + i));
            __m256i b = _mm256_loadu_si256((const __m256i *)(src + 2 * wp + i));
            __m128i *d = (__m128i *)(dst + 3 * i);
            for (int v = 0; v < 3; v++) {  /* lane 0 fills d[v], lane 1 d[v + 3] */
                __m256i o = _mm256_or_si256(_mm256_or_si256(_mm256_shuffle_epi8(r, mask[v][0]), _mm256_shuffle_epi8(g, mask[v][1])),
                                            _mm256_shuffle_epi8(b, mask[v][2]));
                _mm256_storeu2_m128i(d + v + 3, d + v, o);
            }
        }
        for (Py_ssize_t j = i; j < w; j++)
            for (int p = 0; p < 3; p++) dst[3 * j + p] = src[p * wp + j];
    }
}
#endif

/* ---- Python bindings --------------------------------------------------------------------- */

static int check_sizes(Py_buffer *in, Py_ssize_t in_bytes, Py_buffer *out, Py_ssize_t out_bytes) {
    if (in_bytes < 0 || out_bytes < 0) {
        PyErr_SetString(PyExc_OverflowError, "tensor sizes overflow");
        return 0;
    }
    if (in->len != in_bytes || out->len != out_bytes) {
        PyErr_Format(PyExc_ValueError, "buffer sizes %zd and %zd do not match the expected %zd and %zd",
                     in->len, out->len, in_bytes, out_bytes);
        return 0;
    }
    return 1;
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    float scale, zp;
    if (!PyArg_ParseTuple(args, "y*w*ff", &in, &out, &scale, &zp)) return NULL;
    Py_ssize_t n = out.len;
    PyObject *result = NULL;
    if (check_sizes(&in, n > PY_SSIZE_T_MAX / 4 ? -1 : n * 4, &out, n)) {
        Py_BEGIN_ALLOW_THREADS
#ifdef NPUSIM_X86
        if (has_avx2 && has_fma && scale >= 0x1p-100f && scale <= 0x1p100f) quantize_avx2(in.buf, out.buf, n, scale, zp); else
#endif
        quantize_c(in.buf, out.buf, n, scale, zp);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    float scale, zp;
    if (!PyArg_ParseTuple(args, "y*w*ff", &in, &out, &scale, &zp)) return NULL;
    Py_ssize_t n = in.len;
    PyObject *result = NULL;
    if (check_sizes(&in, n, &out, n > PY_SSIZE_T_MAX / 4 ? -1 : n * 4)) {
        Py_BEGIN_ALLOW_THREADS
#ifdef NPUSIM_X86
        if (has_avx2) dequantize_avx2(in.buf, out.buf, n, scale, zp); else
#endif
        dequantize_c(in.buf, out.buf, n, scale, zp);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* m·w·c and m·c·wp in bytes, or -1 when a product overflows (the size check then refuses). */
static Py_ssize_t product3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) {
    Py_ssize_t ab, abc;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) return -1;
    return abc;
}

static int check_matrix(Py_ssize_t m, Py_ssize_t w, Py_ssize_t c, Py_ssize_t wp) {
    if (m < 0 || w < 0 || c < 1 || wp < w) {
        PyErr_SetString(PyExc_ValueError, "need m >= 0, w >= 0, c >= 1 and wp >= w");
        return 0;
    }
    return 1;
}

static PyObject *py_to_planar(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t m, w, c, wp;
    int pad;
    if (!PyArg_ParseTuple(args, "y*w*nnnni", &in, &out, &m, &w, &c, &wp, &pad)) return NULL;
    PyObject *result = NULL;
    if (check_matrix(m, w, c, wp) && check_sizes(&in, product3(m, w, c), &out, product3(m, c, wp))) {
        Py_BEGIN_ALLOW_THREADS
#ifdef NPUSIM_X86
        if (c == 3 && has_avx2) planar3_avx2(in.buf, out.buf, m, w, wp, (uint8_t)pad); else
#endif
        planar_c(in.buf, out.buf, m, w, c, wp, (uint8_t)pad);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_to_interleaved(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t m, w, c, wp;
    if (!PyArg_ParseTuple(args, "y*w*nnnn", &in, &out, &m, &w, &c, &wp)) return NULL;
    PyObject *result = NULL;
    if (check_matrix(m, w, c, wp) && check_sizes(&in, product3(m, c, wp), &out, product3(m, w, c))) {
        Py_BEGIN_ALLOW_THREADS
#ifdef NPUSIM_X86
        if (c == 3 && has_avx2) interleaved3_avx2(in.buf, out.buf, m, w, wp); else
#endif
        interleaved_c(in.buf, out.buf, m, w, c, wp);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_use_avx2(PyObject *self, PyObject *arg) {
    /* Tests turn AVX2 off to run the portable kernels too; it can only be turned on where the CPU has it. */
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
#ifdef NPUSIM_X86
    has_avx2 = on && __builtin_cpu_supports("avx2");
#endif
    return Py_NewRef(Py_None);
}

static PyObject *py_features(PyObject *self, PyObject *unused) {
#ifdef NPUSIM_X86
    return Py_BuildValue("{s:O}", "avx2", has_avx2 ? Py_True : Py_False);
#else
    return PyDict_New();
#endif
}

static PyMethodDef methods[] = {
    {"quantize", py_quantize, METH_VARARGS, "quantize(src_f32, dst_i8, scale, zero_point)"},
    {"dequantize", py_dequantize, METH_VARARGS, "dequantize(src_i8, dst_f32, scale, zero_point)"},
    {"to_planar", py_to_planar, METH_VARARGS, "to_planar(src, dst, m, w, c, wp, pad): (m, w, c) -> (m, c, wp) bytes"},
    {"to_interleaved", py_to_interleaved, METH_VARARGS, "to_interleaved(src, dst, m, w, c, wp): (m, c, wp) -> (m, w, c) bytes"},
    {"features", py_features, METH_NOARGS, "the SIMD extensions the kernels use on this CPU"},
    {"_use_avx2", py_use_avx2, METH_O, "_use_avx2(flag): for tests, run the portable kernels instead"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_simd", "Host-operator kernels (see _native.py).", -1, methods};

PyMODINIT_FUNC PyInit__simd(void) {
#ifdef NPUSIM_X86
    __builtin_cpu_init();
    has_avx2 = __builtin_cpu_supports("avx2");
    has_fma = __builtin_cpu_supports("fma");
#endif
    return PyModule_Create(&module);
}
