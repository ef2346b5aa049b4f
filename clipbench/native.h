/* What clipbench's C kernels share (clipbench/native.py builds each .c file, which includes
 * this, into its own library; so the functions defined here are each library's own exports).
 *
 * built_with_openmp(): whether the library's <name>_threads() entry point splits its work
 * over OpenMP threads. Built with -fopenmp, a library uses the libgomp torch has loaded (the
 * same soname): torch's own threads run the kernel, instead of Python threads competing with
 * them while they spin after a GEMM.
 *
 * With AVX512-BF16 (-march=native on a CPU that has it): the bf16 kernels' exp2, rounding
 * and widening. With AMX-BF16 as well: amx_supported() asks Linux for the tile state, and the
 * tile helpers; elsewhere amx_supported() is 0. A source defines _GNU_SOURCE
 * before its first #include (for syscall()). */
#ifndef CLIPBENCH_NATIVE_H
#define CLIPBENCH_NATIVE_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

int built_with_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
/* AVX512-BF16 (AMX implies it): what the bf16 kernels share beyond the tiles. */
#define CLIPBENCH_AVX512_BF16 1
#include <immintrin.h>

/* 2^x for x <= 0: 2^n 2^f with n = round(x), |f| <= 1/2 and the degree-5 Taylor polynomial
 * (relative error ~2e-6, far below bf16's 4e-3). Below 2^-126 the result is 0, not a
 * subnormal: the CPU computes on subnormals through slow microcode, and a ViT-B-32 attention
 * layer whose scores spread widely took 4.1 ms instead of 1.9. */
static inline __m512 exp2_nonpositive(__m512 x) {
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GE_OQ);
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(normal, p, n);
}

/* 16 floats rounded to bf16 (nearest even), and 16 bf16 widened exactly. */
static inline void store_bf16(uint16_t *to, __m512 values) {
    _mm256_storeu_si256((__m256i *)to, (__m256i)_mm512_cvtneps_pbh(values));
}

static inline __m512 load_bf16(const uint16_t *from) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)from));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

#endif

#if defined(CLIPBENCH_AVX512_BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define CLIPBENCH_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands out AMX state only to a process that asks (as oneDNN does). */
int amx_supported(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* All eight tiles 16 rows x 64 bytes: 16 x 32 bf16 operands, 16 x 16 fp32 accumulators. */
static inline void configure_tiles(void) {
    tile_config config = {0};
    config.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* The 2 x 2 block of tile products both bf16 kernels run: fp32 sums in tiles 0, 1 (upper
 * rows: left, right columns) and 2, 3 (lower rows); per step the left operand's upper and
 * lower 16 rows in tiles 4, 5, the right operand's left and right 16 columns in tiles 6, 7.
 * Each operand feeds two products, and a load waits for no product still reading the tile it
 * replaces but the one just issued. Strides in bytes; a block of sums is 32 x 32 floats. */
static inline void zero_sums(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

static inline void load_sums(const float *from, int64_t stride) {
    const float *below = from + 16 * stride / (int64_t)sizeof(float);
    _tile_loadd(0, from, stride);
    _tile_loadd(1, from + 16, stride);
    _tile_loadd(2, below, stride);
    _tile_loadd(3, below + 16, stride);
}

static inline void store_sums(float *to, int64_t stride) {
    float *below = to + 16 * stride / (int64_t)sizeof(float);
    _tile_stored(0, to, stride);
    _tile_stored(1, to + 16, stride);
    _tile_stored(2, below, stride);
    _tile_stored(3, below + 16, stride);
}

static inline void multiply_step(const void *upper, const void *lower, int64_t left_stride,
                                 const void *left_columns, const void *right_columns,
                                 int64_t right_stride) {
    _tile_loadd(4, upper, left_stride);
    _tile_loadd(6, left_columns, right_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(5, lower, left_stride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_loadd(7, right_columns, right_stride);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(3, 5, 7);
}

#else
int amx_supported(void) { return 0; }
#endif

#endif
