/* Pillow's bilinear and bicubic resize of an RGB image, bit for bit, vectorised.
 *
 * Pillow (src/libImaging/Resample.c) resizes in two separable passes, each rounding to 8 bits:
 * per output pixel a window of input pixels weighted by coefficients computed in double and
 * converted to 22-bit fixed point, summed in int32. The sums are exact integer arithmetic, so
 * any order of adding them gives Pillow's bytes; only the coefficients must be computed as
 * Pillow computes them (same expressions, same order: built with -ffp-contract=off, since a
 * fused multiply-add rounds once where Pillow rounds twice). Pillow's loops are scalar, a
 * 1280² JPEG to 224² taking 9-11 ms, more than decoding it; here each pass is a loop over 16
 * image rows (horizontal) or a row's bytes (vertical) that the compiler vectorises.
 *
 * The input is Pillow's own storage of an RGB image (4 bytes a pixel, the 4th unused, rows
 * contiguous), as its Arrow export hands it over without a copy; the output is packed RGB. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native.h"

#define PRECISION_BITS (32 - 8 - 2)
#define ROWS 16 /* image rows the horizontal pass carries at once: one 512-bit int32 vector */

enum { FILTER_BILINEAR = 2, FILTER_BICUBIC = 3 }; /* Pillow's Resampling values */

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's precompute_coeffs then normalize_coeffs_8bpc, for the whole input range (box
 * 0..in_size): per output position its first input index and tap count in bounds, its
 * fixed-point coefficients in k (ksize a position). Returns ksize, 0 on failure. */
static int coefficients(int in_size, int out_size, int filter, int **bounds_out,
                        int32_t **k_out) {
    double (*f)(double) = filter == FILTER_BICUBIC ? bicubic_filter : bilinear_filter;
    double filter_support = filter == FILTER_BICUBIC ? 2.0 : 1.0;
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filter_support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = malloc(sizeof(double) * ksize);
    int32_t *k = calloc((size_t)out_size * ksize, sizeof(int32_t));
    int *bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    if (!w || !k || !bounds) {
        free(w), free(k), free(bounds);
        return 0;
    }
    double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = f((x + xmin - center + 0.5) * inv_filterscale);
            ww += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            double c = ww != 0.0 ? w[x] / ww : w[x];
            k[xx * ksize + x] = c < 0 ? (int32_t)(-0.5 + c * (1 << PRECISION_BITS))
                                      : (int32_t)(0.5 + c * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(w);
    *bounds_out = bounds;
    *k_out = k;
    return ksize;
}

static inline uint8_t clip8(int32_t sum) {
    int32_t v = sum >> PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* rows x in_w pixels of 4 bytes (row stride in_stride bytes) -> rows x out_w packed RGB
 * pixels. Sixteen rows at a time: their pixels
 * transposed so that one input column of all sixteen is one vector, which every tap
 * multiplies by its coefficient. */
static int horizontal(const uint8_t *in, int64_t in_stride, int in_w, int rows, uint8_t *out,
                      int out_w, const int *bounds, const int32_t *k, int ksize) {
    uint32_t *columns = malloc(sizeof(uint32_t) * ROWS * (size_t)in_w);
    if (!columns) return 0;
    int64_t out_stride = (int64_t)out_w * 3;
    for (int r0 = 0; r0 < rows; r0 += ROWS) {
        int n = rows - r0 < ROWS ? rows - r0 : ROWS;
        const uint8_t *lines[ROWS];
        for (int r = 0; r < ROWS; r++) lines[r] = in + (r0 + (r < n ? r : n - 1)) * in_stride;
        for (int x = 0; x < in_w; x++)
            for (int r = 0; r < ROWS; r++)
                memcpy(columns + (int64_t)x * ROWS + r, lines[r] + 4 * (int64_t)x, 4);
        for (int xx = 0; xx < out_w; xx++) {
            int xmin = bounds[2 * xx], taps = bounds[2 * xx + 1];
            const int32_t *kx = k + (int64_t)xx * ksize;
            int32_t red[ROWS], green[ROWS], blue[ROWS];
            for (int r = 0; r < ROWS; r++) red[r] = green[r] = blue[r] = 1 << (PRECISION_BITS - 1);
            for (int x = 0; x < taps; x++) {
                const uint32_t *column = columns + (int64_t)(xmin + x) * ROWS;
                int32_t c = kx[x];
                for (int r = 0; r < ROWS; r++) {
                    uint32_t pixel = column[r];
                    red[r] += (int32_t)(pixel & 255) * c;
                    green[r] += (int32_t)((pixel >> 8) & 255) * c;
                    blue[r] += (int32_t)((pixel >> 16) & 255) * c;
                }
            }
            for (int r = 0; r < n; r++) {
                uint8_t *o = out + (r0 + r) * out_stride + (int64_t)xx * 3;
                o[0] = clip8(red[r]), o[1] = clip8(green[r]), o[2] = clip8(blue[r]);
            }
        }
    }
    free(columns);
    return 1;
}

/* out_h rows of `lanes` bytes from the input's rows of as many: each output byte the weighted
 * sum of the bytes above one another, the same lane of every row in its window. */
static int vertical(const uint8_t *in, int64_t lanes, uint8_t *out, int out_h, const int *bounds,
                    const int32_t *k, int ksize) {
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)lanes);
    if (!sums) return 0;
    for (int yy = 0; yy < out_h; yy++) {
        int ymin = bounds[2 * yy], taps = bounds[2 * yy + 1];
        const int32_t *ky = k + (int64_t)yy * ksize;
        for (int64_t j = 0; j < lanes; j++) sums[j] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < taps; y++) {
            const uint8_t *line = in + (int64_t)(ymin + y) * lanes;
            int32_t c = ky[y];
            for (int64_t j = 0; j < lanes; j++) sums[j] += (int32_t)line[j] * c;
        }
        uint8_t *o = out + (int64_t)yy * lanes;
        for (int64_t j = 0; j < lanes; j++) o[j] = clip8(sums[j]);
    }
    free(sums);
    return 1;
}

/* Image.resize((out_w, out_h), filter) of an RGB image whose both sides change: in is
 * Pillow's RGB storage (4 bytes a pixel, rows contiguous), out packed RGB (out_h x out_w x
 * 3). Returns 1, or 0 if memory ran out or the filter is neither bilinear nor bicubic. */
int resize_rgbx(const uint8_t *in, int64_t in_w, int64_t in_h, uint8_t *out, int64_t out_w,
                int64_t out_h, int64_t filter) {
    if (filter != FILTER_BILINEAR && filter != FILTER_BICUBIC) return 0;
    int *bounds_h = NULL, *bounds_v = NULL;
    int32_t *k_h = NULL, *k_v = NULL;
    uint8_t *between = NULL;
    int done = 0;
    int ksize_v = coefficients((int)in_h, (int)out_h, (int)filter, &bounds_v, &k_v);
    int ksize_h = coefficients((int)in_w, (int)out_w, (int)filter, &bounds_h, &k_h);
    if (!ksize_v || !ksize_h) goto end;
    /* Pillow's order: vertical first only when the height shrinks more than twice as much
     * as the width; horizontal first over just the rows the vertical pass reads. */
    if (in_h - out_h > 0 && in_h - out_h > (in_w - out_w) * 2) {
        between = malloc((size_t)out_h * in_w * 4);
        done = between && vertical(in, 4 * in_w, between, (int)out_h, bounds_v, k_v, ksize_v) &&
               horizontal(between, 4 * in_w, (int)in_w, (int)out_h, out, (int)out_w, bounds_h,
                          k_h, ksize_h);
    } else {
        int first = bounds_v[0];
        int last = bounds_v[2 * out_h - 2] + bounds_v[2 * out_h - 1];
        for (int64_t yy = 0; yy < out_h; yy++) bounds_v[2 * yy] -= first;
        between = malloc((size_t)(last - first) * out_w * 3);
        done = between &&
               horizontal(in + (int64_t)first * 4 * in_w, 4 * in_w, (int)in_w, last - first,
                          between, (int)out_w, bounds_h, k_h, ksize_h) &&
               vertical(between, 3 * out_w, out, (int)out_h, bounds_v, k_v, ksize_v);
    }
end:
    free(bounds_h), free(bounds_v), free(k_h), free(k_v), free(between);
    return done;
}
