/* Fused integer kernels for the reference interpreter: the same arithmetic as edgequant.qmath
 * (the spec, in NumPy) in one pass over memory instead of ten. Loaded with ctypes by
 * kernels/native.py; every function is tested bit for bit against qmath (tests/test_native.py).
 *
 * Layout: a tensor is (outer, C, inner) with per-channel parameters indexed by the middle axis
 * (NCHW: outer = N, C = channels, inner = H*W; per-tensor: C = 1).
 *
 * Requantization modes (qmath.requantize):
 *   0 gemmlowp  MultiplyByQuantizedMultiplier: left shift, SaturatingRoundingDoublingHighMul,
 *               RoundingDivideByPOT (two roundings, TFLite's default)
 *   1 single    (|x| * M0 + 2^(s-1)) >> s with the sign restored (TFLITE_SINGLE_ROUNDING, ties away)
 *   2 onnxruntime  float32(x) * float32 multiplier, round half to even (MLAS)
 *
 * The module init exists only so that setuptools can build and locate the library; there are no
 * Python-level functions.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define I32_MIN (-2147483647LL - 1)
#define I32_MAX 2147483647LL

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* gemmlowp SaturatingRoundingDoublingHighMul(a, b) for b > 0 = floor((a*b + 2^30) / 2^31): the
 * sign-dependent nudge and C truncation of gemmlowp reduce to this floor for every int32 a (the
 * only saturating case, a = b = INT32_MIN, cannot occur: M0 >= 0). */
static inline int64_t srdhm(int64_t a, int64_t b) { return (a * b + (1LL << 30)) >> 31; }

/* gemmlowp RoundingDivideByPOT: x / 2^e, ties away from zero. */
static inline int64_t rdbpot(int64_t x, int64_t e) {
    int64_t mask = (1LL << e) - 1;
    int64_t rem = x & mask;
    int64_t thr = (mask >> 1) + (x < 0);
    return (x >> e) + (rem > thr);
}

static inline int64_t mbqm(int64_t x, int64_t m0, int64_t shift) {
    int64_t left = shift > 0 ? shift : 0, right = shift < 0 ? -shift : 0;
    int64_t xs = clamp64(x * (1LL << left), I32_MIN, I32_MAX);
    return rdbpot(srdhm(xs, m0), right);
}

static inline int64_t mbqm_single(int64_t x, int64_t m0, int64_t shift) {
    int64_t total = 31 - shift;
    x = clamp64(x, I32_MIN, I32_MAX);
    int64_t p = (x < 0 ? -x : x) * m0;
    int64_t q = (p + (1LL << (total - 1))) >> total;
    return clamp64(x < 0 ? -q : q, I32_MIN, I32_MAX);
}

/* float32 round half to even without libm (nearbyintf is a call that saves the FP environment):
 * below 2^23, adding and subtracting 2^23 rounds to an integer in the current (nearest-even)
 * mode; from 2^23 up every float32 is an integer already. */
static inline float rint_f32(float v) {
    float a = fabsf(v);
    return a < 8388608.0f ? copysignf((a + 8388608.0f) - 8388608.0f, v) : v;
}

static inline int64_t requant_ort(int64_t x, float mult) { return (int64_t)rint_f32((float)x * mult); }

/* Per-element kernels are compiled once per instruction set (AVX-512, AVX2, baseline) and picked
 * at load time, so the int64 arithmetic vectorizes where the CPU allows it. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* acc (outer, C, inner) + bias[c] -> int8 clamp(zp + requant(acc + bias, c), lo, hi). */
#define REQUANT_LOOP(EXPR)                                                                       \
    for (int64_t i = 0; i < inner; i++) {                                                        \
        int64_t x = (int64_t)src[i] + b;                                                         \
        int64_t y = (EXPR) + zp;                                                                 \
        dst[i] = (int8_t)(y < lo ? lo : (y > hi ? hi : y));                                      \
    }

#define REQUANT(NAME, T)                                                                          \
    CLONES void NAME(const T *acc, int64_t outer, int64_t channels, int64_t inner,                \
                     const int32_t *bias, const int32_t *m0, const int32_t *shift,                \
                     const float *mult, int64_t per_channel, int64_t zp, int64_t lo, int64_t hi,  \
                     int mode, int8_t *out) {                                                     \
        for (int64_t o = 0; o < outer; o++) {                                                     \
            for (int64_t c = 0; c < channels; c++) {                                              \
                int64_t k = per_channel ? c : 0;                                                  \
                int64_t b = bias ? bias[c] : 0, m = m0[k], s = shift[k];                          \
                float f = mult[k];                                                                \
                const T *src = acc + (o * channels + c) * inner;                                  \
                int8_t *dst = out + (o * channels + c) * inner;                                   \
                if (mode == 0) {                                                                  \
                    REQUANT_LOOP(mbqm(x, m, s))                                                   \
                } else if (mode == 1) {                                                           \
                    REQUANT_LOOP(mbqm_single(x, m, s))                                            \
                } else {                                                                          \
                    REQUANT_LOOP(requant_ort(x, f))                                               \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

REQUANT(eq_requant_f32, float)
REQUANT(eq_requant_f64, double)
REQUANT(eq_requant_i32, int32_t)
REQUANT(eq_requant_i64, int64_t)

/* TFLite integer Add (gemmlowp mode): both inputs left-shifted, rescaled to a common scale,
 * summed, rescaled to the output; single = 1 rounds each rescaling once. Same-shape inputs. */
CLONES void eq_add(const int8_t *a, const int8_t *b, int64_t n, int64_t za, int64_t zb, int64_t zy,
            int64_t left_shift, int64_t m0a, int64_t sa, int64_t m0b, int64_t sb, int64_t m0o,
            int64_t so, int64_t lo, int64_t hi, int single, int8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        int64_t xa = ((int64_t)a[i] - za) * (1LL << left_shift);
        int64_t xb = ((int64_t)b[i] - zb) * (1LL << left_shift);
        int64_t y;
        if (single) {
            y = mbqm_single(mbqm_single(xa, m0a, sa) + mbqm_single(xb, m0b, sb), m0o, so);
        } else {
            y = mbqm(mbqm(xa, m0a, sa) + mbqm(xb, m0b, sb), m0o, so);
        }
        out[i] = (int8_t)clamp64(y + zy, lo, hi);
    }
}

/* out[i] = table[x[i] - lo]; returns the index of the first out-of-table input, or -1. */
CLONES int64_t eq_lut(const int8_t *x, int64_t n, const int8_t *table, int64_t lo, int64_t size, int8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        int64_t k = (int64_t)x[i] - lo;
        if (k < 0 || k >= size) return i;
        out[i] = table[k];
    }
    return -1;
}

/* int8 -> float32 minus the zero point, the exact input of a float32 convolution. */
CLONES void eq_shift_f32(const int8_t *x, int64_t n, float zp, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)x[i] - zp;
}

static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
