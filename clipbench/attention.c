/* Self-attention of the image towers' heads in bf16 on AMX tiles, or on AVX512-BF16 vectors
 * where the CPU has no AMX (Zen 4) (clipbench/fused.py).
 *
 * The towers' heads are small (ViT-B-32: 50 tokens x 64 dims per head, ViT-B-16: 197 x 64),
 * and torch's flash kernel runs them at 75-225 GFLOP/s on a 2-core AMX Xeon: 18-21% of the
 * towers' time for 1-2% of their FLOPs (on a 2-core Zen 4 EPYC at 38-85 GFLOP/s). Here each
 * (image, head) is one unit: its keys and values are packed once into the tiles'
 * pair-interleaved layout, then per block of 32 queries the scores Q K^T (fp32
 * accumulation), their softmax (fp32, unnormalised probabilities rounded to bf16 as flash
 * does) and P V run from L1, and the output rows are divided by the softmax sums.
 *
 * Input: the qkv projection as (batch, length, 3, heads, dim) bf16, contiguous; output:
 * (batch, length, heads, dim) bf16, the layout the output projection reads. attention()
 * handles part `part` of `parts` of the (image, head) units (threads calling it with
 * different parts never write the same memory); attention_threads() spreads them over
 * OpenMP threads. Built by clipbench/native.py with -march=native; attention_supported()
 * says whether it runs here (without AVX512-BF16, or on an AMX build where Linux refuses the
 * tiles, it does not, and the caller keeps torch's kernel). */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "native.h"

#ifdef CLIPBENCH_AVX512_BF16

/* Queries per block: two tiles of 16 rows. */
#define QUERIES 32

#ifdef CLIPBENCH_AMX
/* The first `rows` (all 32 on the tiles) of a 32 x 32 block of fp32 sums over `steps` of
 * A_s B_s, stored at `to` (row stride in bytes): A_s's two 16-row halves at `left` + 32 s
 * elements and 16 rows further; B_s's two 16-column halves at `right` + s `right_step` and 16
 * dwords further (native.h's 2 x 2 tile block). */
static inline void multiply(int64_t steps, const uint16_t *left, int64_t left_stride,
                            const uint32_t *right, int64_t right_step, int64_t right_stride,
                            float *to, int64_t to_stride, int64_t rows) {
    (void)rows;
    const uint16_t *lower = left + 16 * left_stride / sizeof(uint16_t);
    zero_sums();
    for (int64_t s = 0; s < steps; s++) {
        const uint32_t *b = right + s * right_step;
        multiply_step(left + 32 * s, lower + 32 * s, left_stride, b, b + 16, right_stride);
    }
    store_sums(to, to_stride);
}
#else
/* The same block on AVX512-BF16 vectors (Zen 4): 8 rows x 32 columns of sums in 16
 * registers; per pair of depths the two 16-column vectors of B are loaded once and each row's
 * pair of A broadcast into two dot products. Rows past `rows` (a partial last block of
 * queries) are not computed: at 197 tokens that saves 27 of the last block's 32. */
static inline void multiply(int64_t steps, const uint16_t *left, int64_t left_stride,
                            const uint32_t *right, int64_t right_step, int64_t right_stride,
                            float *to, int64_t to_stride, int64_t rows) {
    const int64_t pairs = 16 * steps, pair_stride = right_stride / (int64_t)sizeof(uint32_t);
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        const char *a = (const char *)left + r0 * left_stride;
        __m512 sums[8][2];
        for (int r = 0; r < 8; r++) sums[r][0] = sums[r][1] = _mm512_setzero_ps();
        for (int64_t p = 0; p < pairs; p++) {
            const uint32_t *b = right + (p / 16) * right_step + (p % 16) * pair_stride;
            __m512bh left_columns = (__m512bh)_mm512_loadu_si512(b);
            __m512bh right_columns = (__m512bh)_mm512_loadu_si512(b + 16);
            for (int r = 0; r < 8; r++) {
                __m512bh pair = (__m512bh)_mm512_set1_epi32(
                    *(const int32_t *)(a + r * left_stride + 4 * p));
                sums[r][0] = _mm512_dpbf16_ps(sums[r][0], pair, left_columns);
                sums[r][1] = _mm512_dpbf16_ps(sums[r][1], pair, right_columns);
            }
        }
        for (int r = 0; r < 8; r++) {
            float *row = (float *)((char *)to + (r0 + r) * to_stride);
            _mm512_storeu_ps(row, sums[r][0]);
            _mm512_storeu_ps(row + 16, sums[r][1]);
        }
    }
}
#endif

/* One (image, head): keys and values packed, then QUERIES queries at a time. */
static void one_head(const uint16_t *qkv, uint16_t *out, int64_t length, int64_t heads,
                     int64_t dim, int64_t padded, float scale, uint32_t *keys,
                     uint32_t *values, uint16_t *queries, float *scores, uint16_t *probs,
                     float *outputs) {
    const int64_t token_stride = 3 * heads * dim; /* elements between tokens in qkv */
    const int64_t pairs = dim / 2;
    /* keys[p][n]: dims 2p, 2p+1 of key n (the right operand of Q K^T), 16 keys per gather */
    const __m512i key_offsets = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)(token_stride / 2)));
    const uint32_t *key0 = (const uint32_t *)(qkv + heads * dim);
    for (int64_t n0 = 0; n0 < padded; n0 += 16) {
        __mmask16 real = n0 + 16 <= length ? 0xFFFF
                         : n0 >= length    ? 0
                                           : (__mmask16)((1u << (length - n0)) - 1);
        const uint32_t *block = key0 + n0 * (token_stride / 2);
        for (int64_t p = 0; p < pairs; p++) {
            __m512i gathered = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), real,
                                                           key_offsets, block + p, 4);
            _mm512_store_si512((__m512i *)(keys + p * padded + n0), gathered);
        }
    }
    /* values[q][d]: dim d of values 2q (low half) and 2q+1 (high half), 32 dims at a time */
    const __m512i low = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                         40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1,
                                         32, 0);
    const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
    const uint16_t *value0 = qkv + 2 * heads * dim;
    for (int64_t q = 0; q < padded / 2; q++) {
        int64_t n = 2 * q;
        for (int64_t d = 0; d < dim; d += 32) {
            __m512i even = n < length ? _mm512_loadu_si512(value0 + n * token_stride + d)
                                      : _mm512_setzero_si512();
            __m512i odd = n + 1 < length
                              ? _mm512_loadu_si512(value0 + (n + 1) * token_stride + d)
                              : _mm512_setzero_si512();
            _mm512_storeu_si512(values + q * dim + d, _mm512_permutex2var_epi16(even, low, odd));
            _mm512_storeu_si512(values + q * dim + d + 16,
                                _mm512_permutex2var_epi16(even, high, odd));
        }
    }
    for (int64_t m0 = 0; m0 < length; m0 += QUERIES) {
        int64_t rows = length - m0 < QUERIES ? length - m0 : QUERIES;
        /* a full block is read in place; the last, partial one from a zero-padded copy */
        const uint16_t *block = qkv + m0 * token_stride;
        int64_t block_stride = token_stride * sizeof(uint16_t);
        if (rows < QUERIES) {
            memset(queries, 0, QUERIES * dim * sizeof(uint16_t));
            for (int64_t m = 0; m < rows; m++)
                memcpy(queries + m * dim, block + m * token_stride, dim * sizeof(uint16_t));
            block = queries;
            block_stride = dim * sizeof(uint16_t);
        }
        /* scores = Q K^T: 32 keys per block, 32 dims per step */
        for (int64_t n0 = 0; n0 < padded; n0 += 32)
            multiply(dim / 32, block, block_stride, keys + n0, 16 * padded,
                     padded * sizeof(uint32_t), scores + n0, padded * sizeof(float), rows);
        /* softmax over the real keys; padded keys and query rows get probability 0 */
        float inverse_sum[QUERIES];
        const float scale2 = scale * 1.44269504f; /* log2(e) */
        const __m512 vscale2 = _mm512_set1_ps(scale2);
        for (int64_t m = 0; m < QUERIES; m++) {
            float *row = scores + m * padded;
            uint16_t *prow = probs + m * padded;
            if (m >= rows) {
                memset(prow, 0, padded * sizeof(uint16_t));
                continue;
            }
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            for (int64_t n = 0; n < length; n += 16) {
                __mmask16 real = n + 16 <= length ? 0xFFFF : (__mmask16)((1u << (length - n)) - 1);
                vmax = _mm512_mask_max_ps(vmax, real, vmax, _mm512_loadu_ps(row + n));
            }
            /* e^(scale (s - max)) = 2^(s log2e scale - max log2e scale), one FMA */
            __m512 offset = _mm512_set1_ps(_mm512_reduce_max_ps(vmax) * scale2);
            __m512 vsum = _mm512_setzero_ps();
            int64_t n = 0;
            for (; n < length; n += 16) {
                __mmask16 real = n + 16 <= length ? 0xFFFF : (__mmask16)((1u << (length - n)) - 1);
                __m512 x = _mm512_fmsub_ps(_mm512_loadu_ps(row + n), vscale2, offset);
                __m512 e = _mm512_maskz_mov_ps(real, exp2_nonpositive(x));
                vsum = _mm512_add_ps(vsum, e);
                store_bf16(prow + n, e);
            }
            if (n < padded) memset(prow + n, 0, (padded - n) * sizeof(uint16_t));
            inverse_sum[m] = 1.0f / _mm512_reduce_add_ps(vsum);
        }
        /* outputs = P V: 32 dims per block, 32 keys per step */
        for (int64_t d0 = 0; d0 < dim; d0 += 32)
            multiply(padded / 32, probs, padded * sizeof(uint16_t), values + d0, 16 * dim,
                     dim * sizeof(uint32_t), outputs + d0, dim * sizeof(float), rows);
        for (int64_t m = 0; m < rows; m++) {
            __m512 inverse = _mm512_set1_ps(inverse_sum[m]);
            uint16_t *to = out + (m0 + m) * heads * dim;
            for (int64_t d = 0; d < dim; d += 16)
                store_bf16(to + d, _mm512_mul_ps(_mm512_loadu_ps(outputs + m * dim + d), inverse));
        }
    }
}

/* Returns 0, or -1 where the shape is not served (dim not a multiple of 32, or no memory):
 * then the caller runs torch's kernel. */
int attention(const uint16_t *qkv, uint16_t *out, int64_t batch, int64_t length, int64_t heads,
              int64_t dim, float scale, int64_t part, int64_t parts) {
    if (dim % 32 != 0 || dim > 256 || length < 1) return -1;
    const int64_t padded = (length + 31) / 32 * 32;
    uint32_t *keys = aligned_alloc(64, (size_t)(dim / 2) * padded * sizeof(uint32_t));
    uint32_t *values = aligned_alloc(64, (size_t)(padded / 2) * dim * sizeof(uint32_t));
    uint16_t *queries = aligned_alloc(64, QUERIES * (size_t)dim * sizeof(uint16_t));
    float *scores = aligned_alloc(64, QUERIES * (size_t)padded * sizeof(float));
    uint16_t *probs = aligned_alloc(64, QUERIES * (size_t)padded * sizeof(uint16_t));
    float *outputs = aligned_alloc(64, QUERIES * (size_t)dim * sizeof(float));
    int status = -1;
    if (keys && values && queries && scores && probs && outputs) {
#ifdef CLIPBENCH_AMX
        configure_tiles();
#endif
        const int64_t units = batch * heads;
        for (int64_t unit = units * part / parts; unit < units * (part + 1) / parts; unit++) {
            int64_t image = unit / heads, head = unit % heads;
            one_head(qkv + image * length * 3 * heads * dim + head * dim,
                     out + image * length * heads * dim + head * dim, length, heads, dim, padded,
                     scale, keys, values, queries, scores, probs, outputs);
        }
#ifdef CLIPBENCH_AMX
        _tile_release();
#endif
        status = 0;
    }
    free(keys);
    free(values);
    free(queries);
    free(scores);
    free(probs);
    free(outputs);
    return status;
}

#else /* no AVX512-BF16 on the CPU this was built for */

int attention(const uint16_t *qkv, uint16_t *out, int64_t batch, int64_t length,
                   int64_t heads, int64_t dim, float scale, int64_t part, int64_t parts) {
    (void)qkv, (void)out, (void)batch, (void)length, (void)heads, (void)dim, (void)scale;
    (void)part, (void)parts;
    return -1;
}

#endif

/* Whether attention() runs here: on the tiles where Linux grants them, else on AVX512-BF16. */
int attention_supported(void) {
#if defined(CLIPBENCH_AMX)
    return amx_supported();
#elif defined(CLIPBENCH_AVX512_BF16)
    return 1;
#else
    return 0;
#endif
}

/* All units, on `threads` OpenMP threads (one without OpenMP). */
int attention_threads(const uint16_t *qkv, uint16_t *out, int64_t batch, int64_t length,
                      int64_t heads, int64_t dim, float scale, int64_t threads) {
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)threads) reduction(| : failed)
    failed |= attention(qkv, out, batch, length, heads, dim, scale, omp_get_thread_num(),
                             omp_get_num_threads()) != 0;
#else
    (void)threads;
    failed = attention(qkv, out, batch, length, heads, dim, scale, 0, 1) != 0;
#endif
    return failed ? -1 : 0;
}
