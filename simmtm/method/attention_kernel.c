/* Softmax attention for heads of size E < 8, one problem (T x E) at a time. Every tensor is read or written in place
   through strides (in elements; the last dimension has stride 1): problem p = (b, h) with b = p / H, h = p % H starts
   at b * S[0] + h * S[1] and its rows are S[2] apart, so the (N, T, 3, h, E) output of the fused q/k/v projection is
   read without copies and the output is written as (N, T, h, E), where the head merge is a view. lse is (P, T).
   Each problem's k and v are transposed to (E, T) so that every loop over the T keys is unit-stride and vectorises;
   E is a compile-time constant in each specialisation (always_inline + a literal), so the loops over E unroll.
   Dropout on the attention weights (D = 1; thr > 0) keeps weight (i, j) of problem p when 16 bits of a hash of
   (seed, p, i, j) are at least thr = dropout * 2^16, and scales the kept ones by 1 / (1 - dropout). The backward pass
   recomputes the same hash, as flash attention regenerates its Philox stream: no T x T mask is stored. D = 0 compiles
   to the kernel without dropout (the branches on D are constants). */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define AT(x, S, p, H) ((x) + ((p) / (H)) * (S)[0] + ((p) % (H)) * (S)[1])

/* exp(x) for x <= 0 (every softmax argument here, after the row maximum or the log-sum-exp is subtracted):
   2^n * p(r), |r| <= ln2/2, a degree-7 Taylor polynomial (truncation error < 2e-8, below float rounding); flushed
   to 2^-126 below -87 (the reference gives 0 there: a difference far below any tolerance). Written inline so that the
   loops around it vectorise without a call per vector. */
INLINE float exp_le0(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720; p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6;
    p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    union { float f; int i; } u = { p };
    u.i += (int)n << 23;
    return u.f;
}

/* The random stream: one splitmix64 step per row gives a key; the murmur3 finaliser of key + c * golden ratio gives a
   32-bit draw for each counter c, whose two halves decide columns c and c + T/2 (an odd T's last column has its own
   counter). 32-bit integer arithmetic only, so the loop vectorises; one draw for two weights halves its cost. */
INLINE uint32_t row_key(uint64_t seed, long p, long i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(p * 0x100000000l + i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)(z ^ (z >> 31));
}

INLINE uint32_t draw(uint32_t key, long c) {
    uint32_t x = key + (uint32_t)c * 0x9E3779B9u;
    x ^= x >> 16; x *= 0x85EBCA6Bu; x ^= x >> 13; x *= 0xC2B2AE35u; x ^= x >> 16;
    return x;
}

/* z[j] = value if weight j of row i is kept, else 0, for the T columns. */
INLINE void keep_row(float *z, uint64_t seed, long p, long i, long T, uint32_t thr, float value) {
    uint32_t key = row_key(seed, p, i);
    long half = T / 2;
    for (long c = 0; c < half; c++) {
        uint32_t x = draw(key, c);
        z[c] = (x & 0xFFFF) >= thr ? value : 0.0f;
        z[c + half] = (x >> 16) >= thr ? value : 0.0f;
    }
    if (T & 1) z[T - 1] = (draw(key, T - 1) & 0xFFFF) >= thr ? value : 0.0f;
}

INLINE void transpose(const float *x, long rs, float *xt, long T, const int E) {  /* (T, E), row stride rs -> (E, T) */
    for (long j = 0; j < T; j++)
        for (int d = 0; d < E; d++) xt[d * T + j] = x[j * rs + d];
}

/* S: the strides of q, k, v, o (3 each). */
INLINE void forward(const float *q, const float *k, const float *v, float *o, float *lse, const long *S, long H,
                    long p0, long p1, long T, float scale, uint64_t seed, uint32_t thr, float *buf, const int E,
                    const int D) {
    float *kT = buf, *vT = buf + E * T, *s = buf + 2 * E * T, *z = s + T, keep = 1.0f - thr * 0x1p-16f;
    const long *Sq = S, *Sk = S + 3, *Sv = S + 6, *So = S + 9;
    for (long p = p0; p < p1; p++) {
        const float *qp = AT(q, Sq, p, H);
        float *op = AT(o, So, p, H);
        transpose(AT(k, Sk, p, H), Sk[2], kT, T, E);
        transpose(AT(v, Sv, p, H), Sv[2], vT, T, E);
        for (long i = 0; i < T; i++) {
            float qs[8], acc[8], m = -FLT_MAX, l = 0.0f;
            if (D) keep_row(z, seed, p, i, T, thr, 1.0f);
            for (int d = 0; d < E; d++) { qs[d] = qp[i * Sq[2] + d] * scale; acc[d] = 0.0f; }
            for (long j = 0; j < T; j++) {  /* scores of row i and their maximum */
                float x = 0.0f;
                for (int d = 0; d < E; d++) x += qs[d] * kT[d * T + j];
                s[j] = x;
                m = x > m ? x : m;
            }
            for (long j = 0; j < T; j++) {  /* unnormalised probabilities, their sum, and p @ v (kept p only) */
                float e = exp_le0(s[j] - m);
                l += e;
                if (D) e *= z[j];
                for (int d = 0; d < E; d++) acc[d] += e * vT[d * T + j];
            }
            if (D) for (int d = 0; d < E; d++) op[i * So[2] + d] = acc[d] / (l * keep);
            else for (int d = 0; d < E; d++) op[i * So[2] + d] = acc[d] / l;
            lse[p * T + i] = m + __builtin_logf(l);
        }
    }
}

/* dS = P * (dO v^T - rowsum(dO * O)); dq = scale dS k, dk = scale dS^T q, dv = P^T dO. Row by row: dq is a reduction
   over the keys, dk and dv are accumulated over the rows in (E, T) buffers of the problem. With dropout (Z: the kept
   weights times 1 / (1 - dropout), O the dropped output): dv = (P Z)^T dO and dS = P * (Z dO v^T - rowsum(dO * O)).
   S: the strides of q, k, v, o, go, dq, dk, dv (3 each). */
INLINE void backward(const float *q, const float *k, const float *v, const float *o, const float *lse,
                     const float *go, float *dq, float *dk, float *dv, const long *S, long H, long p0, long p1, long T,
                     float scale, uint64_t seed, uint32_t thr, float *buf, const int E, const int D) {
    float *kT = buf, *vT = buf + E * T, *dkT = buf + 2 * E * T, *dvT = buf + 3 * E * T;
    float *prob = buf + 4 * E * T, *ds = prob + T, *z = ds + T, rescale = 1.0f / (1.0f - thr * 0x1p-16f);
    const long *Sq = S, *Sk = S + 3, *Sv = S + 6, *So = S + 9, *Sg = S + 12, *Sdq = S + 15, *Sdk = S + 18,
               *Sdv = S + 21;
    for (long p = p0; p < p1; p++) {
        const float *qp = AT(q, Sq, p, H), *op = AT(o, So, p, H), *gp = AT(go, Sg, p, H);
        float *dqp = AT(dq, Sdq, p, H), *dkp = AT(dk, Sdk, p, H), *dvp = AT(dv, Sdv, p, H);
        transpose(AT(k, Sk, p, H), Sk[2], kT, T, E);
        transpose(AT(v, Sv, p, H), Sv[2], vT, T, E);
        memset(dkT, 0, sizeof(float) * 2 * E * T);  /* dkT and dvT */
        for (long i = 0; i < T; i++) {
            const float *qi = qp + i * Sq[2], *gi = gp + i * Sg[2], *oi = op + i * So[2];
            float qs[8], g[8], rowdot = 0.0f, li = lse[p * T + i];
            if (D) keep_row(z, seed, p, i, T, thr, rescale);
            for (int d = 0; d < E; d++) { qs[d] = qi[d] * scale; g[d] = gi[d]; rowdot += gi[d] * oi[d]; }
            if (D) {
#pragma GCC ivdep
                for (long j = 0; j < T; j++) {  /* prob, ds and z are separate parts of buf */
                    float x = 0.0f, y = 0.0f;
                    for (int d = 0; d < E; d++) { x += qs[d] * kT[d * T + j]; y += g[d] * vT[d * T + j]; }
                    float pj = exp_le0(x - li);
                    prob[j] = pj * z[j];
                    ds[j] = pj * (z[j] * y - rowdot);
                }
            } else {
                for (long j = 0; j < T; j++) {
                    float x = 0.0f, y = 0.0f;
                    for (int d = 0; d < E; d++) { x += qs[d] * kT[d * T + j]; y += g[d] * vT[d * T + j]; }
                    float pj = exp_le0(x - li);
                    prob[j] = pj;
                    ds[j] = pj * (y - rowdot);
                }
            }
            for (int d = 0; d < E; d++) {
                float acc = 0.0f;
                for (long j = 0; j < T; j++) {
                    acc += ds[j] * kT[d * T + j];
                    dkT[d * T + j] += ds[j] * qs[d];  /* qs already carries the scale of dk */
                    dvT[d * T + j] += prob[j] * g[d];
                }
                dqp[i * Sdq[2] + d] = acc * scale;
            }
        }
        for (long j = 0; j < T; j++)
            for (int d = 0; d < E; d++) { dkp[j * Sdk[2] + d] = dkT[d * T + j]; dvp[j * Sdv[2] + d] = dvT[d * T + j]; }
    }
}

/* One function per direction and dropout setting (D): the compiler optimises the dropout-free kernels as it did
   before dropout existed. (With both settings' 14 specialisations inlined into one function, GCC vectorised the
   dropout-free backward differently at E = 3 and 7: equal up to float rounding, but not bit for bit.) */
#define FOR_EACH_SIZE(X, D) X(1, D) X(2, D) X(3, D) X(4, D) X(5, D) X(6, D) X(7, D)
#define FORWARD_ARGS const float *q, const float *k, const float *v, float *o, float *lse, const long *S, long H, \
                     long p0, long p1, long T, float scale, uint64_t seed, uint32_t thr, float *buf
#define BACKWARD_ARGS const float *q, const float *k, const float *v, const float *o, const float *lse, \
                      const float *go, float *dq, float *dk, float *dv, const long *S, long H, long p0, long p1, \
                      long T, float scale, uint64_t seed, uint32_t thr, float *buf
#define FORWARD(E, D) case E: forward(q, k, v, o, lse, S, H, p0, p1, T, scale, seed, thr, buf, E, D); return 0;
#define BACKWARD(E, D) \
    case E: backward(q, k, v, o, lse, go, dq, dk, dv, S, H, p0, p1, T, scale, seed, thr, buf, E, D); return 0;
#define NOINLINE static __attribute__((noinline))

NOINLINE int forward_plain(int E, FORWARD_ARGS) { switch (E) { FOR_EACH_SIZE(FORWARD, 0) } return 2; }
NOINLINE int forward_dropout(int E, FORWARD_ARGS) { switch (E) { FOR_EACH_SIZE(FORWARD, 1) } return 2; }
NOINLINE int backward_plain(int E, BACKWARD_ARGS) { switch (E) { FOR_EACH_SIZE(BACKWARD, 0) } return 2; }
NOINLINE int backward_dropout(int E, BACKWARD_ARGS) { switch (E) { FOR_EACH_SIZE(BACKWARD, 1) } return 2; }

int small_attention_forward(int E, const float *q, const float *k, const float *v, float *o, float *lse,
                            const long *S, long H, long p0, long p1, long T, float scale, uint64_t seed,
                            uint32_t thr) {
    float *buf = malloc(sizeof(float) * (2 * E + 2) * T);
    if (!buf) return 1;
    int code = (thr ? forward_dropout : forward_plain)(E, q, k, v, o, lse, S, H, p0, p1, T, scale, seed, thr, buf);
    free(buf);
    return code;
}

int small_attention_backward(int E, const float *q, const float *k, const float *v, const float *o, const float *lse,
                             const float *go, float *dq, float *dk, float *dv, const long *S, long H, long p0,
                             long p1, long T, float scale, uint64_t seed, uint32_t thr) {
    float *buf = malloc(sizeof(float) * (4 * E + 3) * T);
    if (!buf) return 1;
    int code = (thr ? backward_dropout : backward_plain)(E, q, k, v, o, lse, go, dq, dk, dv, S, H, p0, p1, T, scale,
                                                          seed, thr, buf);
    free(buf);
    return code;
}

/* The keep mask that a call with (seed, thr) applies to problems p0..p1 - 1, as (P, T, T) floats: for tests. */
void small_attention_dropout_mask(float *out, long p0, long p1, long T, uint64_t seed, uint32_t thr) {
    for (long p = p0; p < p1; p++)
        for (long i = 0; i < T; i++) keep_row(out + ((p - p0) * T + i) * T, seed, p, i, T, thr, 1.0f);
}
