/* One pass of sinkhole's exact CPU attention path, fused: the softmax of a block of scores, in place,
 * and the column sums of the probabilities it produces (plus the learned sinks' share, gpt-oss).
 *
 * Why C: in torch ops this step is a softmax (max, exp and sum, normalisation) and a separate column
 * sum, each a pass over a multi-megabyte block, and a causal mask written into the scores before
 * them. Here each row (at most a few tens of KB) stays in L1 while it is read three times, the
 * causal limit is a loop bound, and exp is a polynomial the compiler vectorises. Built by
 * sinkhole/probe/cpu_kernel.py with the machine's C compiler; without one, the torch ops run.
 *
 * Layout: scores (heads, rows, L) float32, contiguous. Head h's row t sees keys [0, lim) with
 * lim = causal_base + t + 1 (causal_base >= 0) or L; later keys get probability 0. Rows whose
 * visible scores are all -inf (fully masked: left padding) become all zeros and take no sink mass.
 * colsum[h * colsum_stride + j] += weight(b, t) * p[h, t, j] for j < L, with b = h / heads_per_batch
 * and weight = valid[b * rows + t] (1 when valid is NULL). With sinks (one logit per head,
 * sinks[h % sinks_mod]) the sink enters the normalisation and sink_mass[h] gains its weighted
 * probability.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0 (Cephes' expf polynomial, relative error ~1e-7, as torch's vectorised exp);
 * exactly 0 below -87, where float32 would turn subnormal (and slow) anyway. */
static inline float exp_nonpositive(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

void sinkhole_softmax_colsum(float *scores, int64_t heads, int64_t rows, int64_t L, int64_t causal_base,
                             float *colsum, int64_t colsum_stride, const float *valid, int64_t heads_per_batch,
                             const float *sinks, int64_t sinks_mod, double *sink_mass) {
    for (int64_t h = 0; h < heads; ++h) {
        float *cs = colsum + h * colsum_stride;
        int64_t b = h / heads_per_batch;
        for (int64_t t = 0; t < rows; ++t) {
            float *row = scores + (h * rows + t) * L;
            int64_t lim = causal_base >= 0 && causal_base + t + 1 < L ? causal_base + t + 1 : L;
            float w = valid ? valid[b * rows + t] : 1.0f;
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int64_t j = 0; j < lim; ++j) m = row[j] > m ? row[j] : m;
            if (m == -INFINITY) {
                memset(row, 0, (size_t)L * sizeof(float));
                continue;
            }
            float sink = sinks ? sinks[h % sinks_mod] : -INFINITY;
            m = sink > m ? sink : m;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < lim; ++j) {
                float e = exp_nonpositive(row[j] - m);
                row[j] = e;
                sum += e;
            }
            if (lim < L) memset(row + lim, 0, (size_t)(L - lim) * sizeof(float));
            float es = sinks ? exp_nonpositive(sink - m) : 0.0f;
            float rinv = 1.0f / (sum + es);
            if (sinks) sink_mass[h] += (double)(es * rinv * w);
            float rw = rinv * w;
#pragma omp simd
            for (int64_t j = 0; j < lim; ++j) {
                float e = row[j];
                row[j] = e * rinv;
                cs[j] += e * rw;
            }
        }
    }
}
