/* The image towers' bf16 linear layers with their epilogues, on AMX tiles (clipbench/fused.py):
 *     out = act(norm(x) W^T + b) (+ residual),   act: none or SiLU, norm: none or LayerNorm.
 *
 * oneDNN runs a ViT-B projection's plain GEMM at 1.9-2.6 TFLOP/s on a 2-core AMX Xeon, but
 * with the epilogues the towers need it falls to 1.4-2.0 (c_fc with SiLU, c_proj and
 * out_proj with the residual add); here they run at 1.8-2.2. The epilogue runs on each
 * 32 x 32 block as it leaves the tiles, while it is in L1, and the weights are packed once,
 * by the caller, into the tiles' pair-interleaved layout: packed[n/32][k/32][2][16][16][2]
 * holds W[32 nb + 16 h + c][32 s + 2 p + e] at [nb][s][h][p][c][e], so that a 16-column,
 * 32-deep slice of W is one contiguous 1 KB tile.
 *
 * Blocking, from what the tiles sustain on one core (measured with a micro-kernel of this
 * loop): 2.9 TFLOP/s with both operands in L1, 2.7-2.9 with one streamed from L2, 2.0-2.3
 * with the accumulators spilled every 8 steps, 0.4-1.0 with both operands from L2 or beyond.
 * So rows of x are packed a chunk at a time (normalised on the way where the layer's
 * LayerNorm comes with them: ln_2 before c_fc, which saves torch's separate pass over
 * the activations, ViT-B-32 +9-10%) into 32-row tiles (a chunk of ~768 KB, kept in
 * L2: 512 rows at k = 768, 128 at k = 3072); the weights are swept in slices of 32 columns x
 * 256 deep, kept in L1 across the chunk's row blocks (the next slice prefetched meanwhile);
 * each 32 x 32 block accumulates on four tiles, spilled to L1 between slices.
 *
 * linear() handles part `part` of `parts` of the 32-row blocks of x (the split never changes
 * a result: each output element is summed in the same order); linear_threads() spreads them
 * over OpenMP threads. Without AMX-BF16 this builds to amx_supported() == 0 and linear()
 * returning -1: the caller keeps oneDNN. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "native.h"

enum { ACT_NONE = 0, ACT_SILU = 1 };

#ifdef CLIPBENCH_AMX

#define CHUNK_BYTES (768 * 1024) /* of x, packed at a time */
#define MAX_CHUNK_ROWS 512
#define SLICE_STEPS 8  /* 32-deep steps per weight slice */
#define TILE_ELEMENTS 512 /* 16 x 32 bf16 */

/* v sigma(v), sigma from e = e^-|v| in (0, 1] (no overflow at any v): 1 / (1 + e) for v >= 0,
 * e / (1 + e) below. rcp14's 2^-14 relative error is far below the bf16 rounding after it. */
static inline __m512 silu(__m512 v) {
    __m512 e = exp2_nonpositive(_mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(-1.44269504f)));
    __m512 inverse = _mm512_rcp14_ps(_mm512_add_ps(e, _mm512_set1_ps(1.0f)));
    __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mul_ps(v, _mm512_mask_mul_ps(inverse, negative, inverse, e));
}

/* One row of a 32-column block: (act(sum + bias) + residual) rounded to bf16. */
static inline void finish_row(const float *sums, const uint16_t *bias, const uint16_t *residual,
                              int64_t act, uint16_t *out) {
    for (int h = 0; h < 32; h += 16) {
        __m512 v = _mm512_add_ps(_mm512_load_ps(sums + h), load_bf16(bias + h));
        if (act == ACT_SILU) v = silu(v);
        if (residual) v = _mm512_add_ps(v, load_bf16(residual + h));
        store_bf16(out + h, v);
    }
}

/* An optional LayerNorm of each row of x, applied as the row is packed (the tower's ln_2
 * before c_fc; qkv, after ln_1, stays with oneDNN): (x - mean) / sqrt(var + eps) weight +
 * bias in float32, rounded once to bf16, as torch rounds its own bf16 LayerNorm.
 * weight == NULL: none. */
typedef struct {
    const float *weight, *bias;
    float eps;
} row_norm;

/* The row's mean and 1 / sqrt(var + eps), in two passes (the row is in L1 after the first),
 * each on two accumulators: one would wait on its own add at every step. */
static void row_moments(const uint16_t *row, int64_t k, float eps, float *mean, float *rstd) {
    __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = 0; c < k; c += 32)
        for (int h = 0; h < 2; h++) sum[h] = _mm512_add_ps(sum[h], load_bf16(row + c + 16 * h));
    const float mu = _mm512_reduce_add_ps(_mm512_add_ps(sum[0], sum[1])) / (float)k;
    const __m512 centre = _mm512_set1_ps(mu);
    __m512 squares[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = 0; c < k; c += 32)
        for (int h = 0; h < 2; h++) {
            __m512 d = _mm512_sub_ps(load_bf16(row + c + 16 * h), centre);
            squares[h] = _mm512_fmadd_ps(d, d, squares[h]);
        }
    const float var = _mm512_reduce_add_ps(_mm512_add_ps(squares[0], squares[1])) / (float)k;
    *mean = mu;
    *rstd = 1.0f / _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(var + eps)));
}

/* x's rows [first, first + rows), normalised by `norm` where it has a weight, as
 * panel[block][step][32 rows][32], zero rows past the end. */
static void pack_rows(const uint16_t *x, int64_t first, int64_t rows, int64_t k, row_norm norm,
                      uint16_t *panel) {
    const int64_t steps = k / 32;
    for (int64_t r = 0; r < (rows + 31) / 32 * 32; r++) {
        const uint16_t *row = r < rows ? x + (first + r) * k : NULL;
        uint16_t *to = panel + (r / 32) * steps * 2 * TILE_ELEMENTS + (r % 32) * 32;
        if (row && norm.weight) {
            float mean, rstd;
            row_moments(row, k, norm.eps, &mean, &rstd);
            const __m512 centre = _mm512_set1_ps(mean), scale = _mm512_set1_ps(rstd);
            for (int64_t c = 0; c < k; c += 16) {
                __m512 v = _mm512_mul_ps(_mm512_sub_ps(load_bf16(row + c), centre), scale);
                v = _mm512_fmadd_ps(v, _mm512_loadu_ps(norm.weight + c),
                                    _mm512_loadu_ps(norm.bias + c));
                store_bf16(to + (c / 32) * 2 * TILE_ELEMENTS + c % 32, v);
            }
            continue;
        }
        for (int64_t s = 0; s < steps; s++) {
            __m512i v = row ? _mm512_loadu_si512(row + 32 * s) : _mm512_setzero_si512();
            _mm512_store_si512(to + s * 2 * TILE_ELEMENTS, v);
        }
    }
}

static void chunk(const uint16_t *x, int64_t first, int64_t rows, int64_t k, row_norm norm,
                  const uint16_t *packed, int64_t n, const uint16_t *bias,
                  const uint16_t *residual, int64_t act, uint16_t *out, uint16_t *panel,
                  float *sums) {
    const int64_t steps = k / 32, blocks = (rows + 31) / 32;
    const char *packed_end = (const char *)(packed + n * k);
    pack_rows(x, first, rows, k, norm, panel);
    for (int64_t nb = 0; nb < n / 32; nb++) {
        const uint16_t *w = packed + nb * steps * 2 * TILE_ELEMENTS;
        for (int64_t s0 = 0; s0 < steps; s0 += SLICE_STEPS) {
            const int64_t s1 = s0 + SLICE_STEPS < steps ? s0 + SLICE_STEPS : steps;
            /* the next slice follows this one in `packed`: its lines spread over our steps */
            const char *next = (const char *)(w + s1 * 2 * TILE_ELEMENTS);
            const int64_t lines = (32 + blocks - 1) / blocks;
            for (int64_t b = 0; b < blocks; b++) {
                float *sum = sums + b * 1024;
                const uint16_t *left = panel + b * steps * 2 * TILE_ELEMENTS;
                if (s0 == 0)
                    zero_sums();
                else
                    load_sums(sum, 32 * sizeof(float));
                for (int64_t s = s0; s < s1; s++) {
                    const char *ahead = next + (b * (s1 - s0) + s - s0) * lines * 64;
                    for (int64_t l = 0; l < lines; l++)
                        if (ahead + 64 * l < packed_end) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
                    const uint16_t *a = left + s * 2 * TILE_ELEMENTS;
                    const uint16_t *bt = w + s * 2 * TILE_ELEMENTS;
                    multiply_step(a, a + TILE_ELEMENTS, 64, bt, bt + TILE_ELEMENTS, 64);
                }
                store_sums(sum, 32 * sizeof(float));
                if (s1 < steps) continue;
                for (int64_t r = 32 * b; r < rows && r < 32 * b + 32; r++) {
                    const int64_t at = (first + r) * n + 32 * nb;
                    finish_row(sum + (r - 32 * b) * 32, bias + 32 * nb,
                               residual ? residual + at : NULL, act, out + at);
                }
            }
        }
    }
}

/* Returns 0, or -1 where the shape is not served (k or n not a multiple of 32, or no
 * memory): then the caller runs oneDNN. `residual` may be NULL. */
int linear(const uint16_t *x, int64_t m, int64_t k, const float *norm_weight,
           const float *norm_bias, float norm_eps, const uint16_t *packed, int64_t n,
           const uint16_t *bias, const uint16_t *residual, int64_t act, uint16_t *out,
           int64_t part, int64_t parts) {
    if (m < 1 || k < 32 || k % 32 || n < 32 || n % 32 || (act != ACT_NONE && act != ACT_SILU))
        return -1;
    const int64_t blocks = (m + 31) / 32;
    const int64_t begin = 32 * (blocks * part / parts);
    int64_t end = 32 * (blocks * (part + 1) / parts);
    if (end > m) end = m;
    /* The most rows whose panel fits CHUNK_BYTES (chunks of 512 rows at k = 768 run 10-13%
     * faster than of 128, which re-read the weights 4x as often; at k = 3072 a 256-row panel
     * leaves L2 and 128 rows run 15% faster), then evened out over this part's rows. */
    int64_t most = CHUNK_BYTES / (2 * k) / 32 * 32;
    most = most < 32 ? 32 : most > MAX_CHUNK_ROWS ? MAX_CHUNK_ROWS : most;
    const int64_t chunks = (end - begin + most - 1) / most;
    const int64_t rows = chunks ? (end - begin + chunks - 1) / chunks : 0;
    const int64_t chunk_rows = (rows + 31) / 32 * 32;
    if (chunk_rows == 0) return 0; /* no rows in this part */
    uint16_t *panel = aligned_alloc(64, chunk_rows * (size_t)k * sizeof(uint16_t));
    float *sums = aligned_alloc(64, chunk_rows / 32 * 1024 * sizeof(float));
    int status = -1;
    if (panel && sums) {
        const row_norm norm = {norm_weight, norm_bias, norm_eps};
        configure_tiles();
        for (int64_t first = begin; first < end; first += chunk_rows) {
            const int64_t rows_here = end - first < chunk_rows ? end - first : chunk_rows;
            chunk(x, first, rows_here, k, norm, packed, n, bias, residual, act, out, panel, sums);
        }
        _tile_release();
        status = 0;
    }
    free(panel);
    free(sums);
    return status;
}

#else /* no AMX-BF16 on the CPU this was built for */

int linear(const uint16_t *x, int64_t m, int64_t k, const float *norm_weight,
           const float *norm_bias, float norm_eps, const uint16_t *packed, int64_t n,
           const uint16_t *bias, const uint16_t *residual, int64_t act, uint16_t *out,
           int64_t part, int64_t parts) {
    (void)x, (void)m, (void)k, (void)norm_weight, (void)norm_bias, (void)norm_eps;
    (void)packed, (void)n, (void)bias, (void)residual, (void)act;
    (void)out, (void)part, (void)parts;
    return -1;
}

#endif

/* All row blocks, on `threads` OpenMP threads (one without OpenMP). */
int linear_threads(const uint16_t *x, int64_t m, int64_t k, const float *norm_weight,
                   const float *norm_bias, float norm_eps, const uint16_t *packed, int64_t n,
                   const uint16_t *bias, const uint16_t *residual, int64_t act, uint16_t *out,
                   int64_t threads) {
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)threads) reduction(| : failed)
    failed |= linear(x, m, k, norm_weight, norm_bias, norm_eps, packed, n, bias, residual, act,
                     out, omp_get_thread_num(), omp_get_num_threads()) != 0;
#else
    (void)threads;
    failed = linear(x, m, k, norm_weight, norm_bias, norm_eps, packed, n, bias, residual, act,
                    out, 0, 1) != 0;
#endif
    return failed ? -1 : 0;
}
