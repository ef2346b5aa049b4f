/* One pass over a caption x image score tile for the hits stage (clipbench/retrieval.py):
 * per row (caption) and per column (image) the rank counts against the query's positive
 * score, and the running top-K lists, in place. The torch path in retrieval.py computes the
 * same; it reads the tile three or four times and gathers every row or column that can enter
 * its list, this reads it twice (once by rows, once by column stripes) and never copies it.
 *
 * Lists are sorted best first by (score descending, positives last, candidate ascending),
 * empty slots (index -1) at the end: the order of retrieval.RunningTopK. Compiled on first use
 * by clipbench/native.py; each call handles part `part` of `parts` of the rows and columns,
 * so that threads calling it with different parts never write the same memory. */
#define _GNU_SOURCE /* syscall(), in native.h */
#include <math.h>
#include <stdlib.h>

#include "native.h"

/* Entries counted in one vectorised loop before any is looked at one by one: a block that
 * holds an entry at or above its floor is searched again, in cache. */
#define BLOCK 256

static inline int beats(float s, int p, int64_t c, float ls, int lp, int64_t lc) {
    if (s != ls) return s > ls; /* -0.0 and +0.0 are one score, as in RunningTopK */
    if (p != lp) return p < lp;
    return c < lc;
}

/* Offer one candidate to a list of k; returns the list's new floor: the lowest score that can
 * still enter (-inf while a slot is empty). */
static float offer(float *score, int64_t *index, uint8_t *positive, int64_t k, float s, int p,
                   int64_t c) {
    if (index[k - 1] >= 0 && !beats(s, p, c, score[k - 1], positive[k - 1], index[k - 1]))
        return score[k - 1];
    int64_t j = k - 1;
    while (j > 0 && (index[j - 1] < 0 || beats(s, p, c, score[j - 1], positive[j - 1],
                                               index[j - 1]))) {
        score[j] = score[j - 1];
        index[j] = index[j - 1];
        positive[j] = positive[j - 1];
        j--;
    }
    score[j] = s;
    index[j] = c;
    positive[j] = (uint8_t)p;
    return index[k - 1] >= 0 ? score[k - 1] : -INFINITY;
}

static inline int64_t part_begin(int64_t n, int64_t part, int64_t parts) {
    return n * part / parts;
}

/* scores: n_rows x n_cols, row-major. row_positive: each row's positive score; col_best: each
 * column's best positive score. own_col: per row, the column of its positive in this tile, or
 * NULL when the tile holds none. col_offset: the global index of column 0; row_ids: each row's
 * candidate index in the column lists. Row arrays (row_*) start at the tile's first row,
 * column arrays (col_*) at its first column; lists are k entries per query, row-major. */
void tile_pass(const float *scores, int64_t n_rows, int64_t n_cols, int64_t k,
               const float *row_positive, const float *col_best, const int64_t *own_col,
               int64_t col_offset, const int64_t *row_ids, int64_t *row_reach,
               int64_t *row_pass, float *row_score, int64_t *row_index, uint8_t *row_positive_top,
               int64_t *col_reach, int64_t *col_pass, float *col_score, int64_t *col_index,
               uint8_t *col_positive_top, int64_t part, int64_t parts) {
    /* Rows: block by block, the counts, then (only where a block reaches the floor) its
     * entries at or above the floor into the row's list. */
    for (int64_t i = part_begin(n_rows, part, parts); i < part_begin(n_rows, part + 1, parts);
         i++) {
        const float *row = scores + i * n_cols;
        const float positive = row_positive[i];
        const int64_t own = own_col ? own_col[i] : -1;
        float *score = row_score + i * k;
        int64_t *index = row_index + i * k;
        uint8_t *flag = row_positive_top + i * k;
        float floor = index[k - 1] >= 0 ? score[k - 1] : -INFINITY;
        int32_t reach = 0, pass = 0;
        for (int64_t j = 0; j < n_cols; j += BLOCK) {
            const int64_t end = j + BLOCK < n_cols ? j + BLOCK : n_cols;
            int32_t hits = 0;
            for (int64_t u = j; u < end; u++) {
                reach += row[u] >= positive;
                pass += row[u] > positive;
                hits += row[u] >= floor;
            }
            if (hits)
                for (int64_t u = j; u < end; u++)
                    if (row[u] >= floor)
                        floor = offer(score, index, flag, k, row[u], u == own, col_offset + u);
        }
        row_reach[i] += reach;
        row_pass[i] += pass;
    }

    /* Columns: this part's stripe, row by row, with per-column counters and floors. */
    const int64_t c0 = part_begin(n_cols, part, parts), width = part_begin(n_cols, part + 1, parts) - c0;
    if (width <= 0) return;
    int32_t *reach = calloc(2 * width, sizeof(int32_t));
    float *floor = malloc(width * sizeof(float));
    if (!reach || !floor) abort(); /* a few KB */
    int32_t *pass = reach + width;
    const float *best = col_best + c0;
    for (int64_t j = 0; j < width; j++) {
        const int64_t at = (c0 + j) * k + k - 1;
        floor[j] = col_index[at] >= 0 ? col_score[at] : -INFINITY;
    }
    for (int64_t i = 0; i < n_rows; i++) {
        const float *row = scores + i * n_cols + c0;
        const int64_t own = own_col ? own_col[i] - c0 : -1;
        for (int64_t j = 0; j < width; j += BLOCK) {
            const int64_t end = j + BLOCK < width ? j + BLOCK : width;
            int32_t hits = 0;
            for (int64_t u = j; u < end; u++) {
                reach[u] += row[u] >= best[u];
                pass[u] += row[u] > best[u];
                hits += row[u] >= floor[u];
            }
            if (hits)
                for (int64_t u = j; u < end; u++)
                    if (row[u] >= floor[u]) {
                        const int64_t c = c0 + u;
                        floor[u] = offer(col_score + c * k, col_index + c * k,
                                         col_positive_top + c * k, k, row[u], u == own,
                                         row_ids[i]);
                    }
        }
    }
    for (int64_t j = 0; j < width; j++) {
        col_reach[c0 + j] += reach[j];
        col_pass[c0 + j] += pass[j];
    }
    free(reach);
    free(floor);
}

/* tile_pass() over all parts, on `threads` OpenMP threads (one without OpenMP). */
void tile_pass_threads(const float *scores, int64_t n_rows, int64_t n_cols, int64_t k,
                       const float *row_positive, const float *col_best, const int64_t *own_col,
                       int64_t col_offset, const int64_t *row_ids, int64_t *row_reach,
                       int64_t *row_pass, float *row_score, int64_t *row_index,
                       uint8_t *row_positive_top, int64_t *col_reach, int64_t *col_pass,
                       float *col_score, int64_t *col_index, uint8_t *col_positive_top,
                       int64_t threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads((int)threads)
    tile_pass(scores, n_rows, n_cols, k, row_positive, col_best, own_col, col_offset, row_ids,
              row_reach, row_pass, row_score, row_index, row_positive_top, col_reach, col_pass,
              col_score, col_index, col_positive_top, omp_get_thread_num(),
              omp_get_num_threads());
#else
    (void)threads;
    tile_pass(scores, n_rows, n_cols, k, row_positive, col_best, own_col, col_offset, row_ids,
              row_reach, row_pass, row_score, row_index, row_positive_top, col_reach, col_pass,
              col_score, col_index, col_positive_top, 0, 1);
#endif
}
