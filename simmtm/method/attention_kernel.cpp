// Softmax self-attention for heads of size E < 8 on the CPU, float32, registered as the torch operators
// simmtm::small_head_attention (q, k, v of (A, B, T, E)), simmtm::small_head_attention_packed (the (N, T, 3, h, E)
// output of a fused q/k/v projection), their backward passes, and simmtm::small_head_dropout_mask (for tests).
// simmtm/method/attention_kernel.py builds it with torch.utils.cpp_extension and registers the autograd formulas
// and the fake (meta) implementations that torch.compile traces with.
//
// One problem (T x E) per thread at a time. Every tensor is read or written in place through strides (the last
// dimension has stride 1): problem p = (b, h) with b = p / B, h = p % B starts at b * s0 + h * s1 and its rows are
// s2 apart, so the packed projection is read without copies and the output is written as (A, T, B, E), where
// merging the heads is a view. lse is a contiguous (A, B, T). Each problem's k and v are transposed to (E, T) so that
// every loop over the T keys is unit-stride and vectorises; E is a template argument, so the loops over E unroll.
// Dropout on the attention weights (D = true; thr > 0) keeps weight (i, j) of problem p when 16 bits of a hash of
// (seed, p, i, j) are at least thr = dropout * 2^16, and scales the kept ones by 1 / (1 - dropout). The backward
// pass recomputes the same hash, as flash attention regenerates its Philox stream: no T x T mask is stored.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// The caller's floating-point mode (flush denormals to zero or not: the run's flush_denormal) for torch's worker
// threads, which started before the run set it; restored when the block of work is done.
struct CallerFpMode {
    unsigned int caller = _mm_getcsr();
    struct Scope {
        unsigned int saved;
        explicit Scope(unsigned int mode) : saved(_mm_getcsr()) { _mm_setcsr(mode); }
        ~Scope() { _mm_setcsr(saved); }
    };
    Scope apply() const { return Scope(caller); }
};
#else
struct CallerFpMode {
    struct Scope {};
    Scope apply() const { return {}; }
};
#endif

namespace {

// exp(x) for x <= 0 (every softmax argument here, after the row maximum or the log-sum-exp is subtracted):
// 2^n * p(r), |r| <= ln2/2, a degree-7 Taylor polynomial (truncation error < 2e-8, below float rounding); flushed
// to 2^-126 below -87 (the reference gives 0 there: a difference far below any tolerance). Written inline so that
// the loops around it vectorise without a call per vector.
inline __attribute__((always_inline)) float exp_le0(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720; p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6;
    p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    int32_t bits;
    std::memcpy(&bits, &p, sizeof bits);
    bits += static_cast<int32_t>(n) << 23;
    std::memcpy(&p, &bits, sizeof p);
    return p;
}

// The random stream: one splitmix64 step per row gives a key; the murmur3 finaliser of key + c * golden ratio gives
// a 32-bit draw for each counter c, whose two halves decide columns c and c + T/2 (an odd T's last column has its
// own counter). 32-bit integer arithmetic only, so the loop vectorises; one draw for two weights halves its cost.
inline __attribute__((always_inline)) uint32_t row_key(uint64_t seed, int64_t p, int64_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(p * 0x100000000l + i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return static_cast<uint32_t>(z ^ (z >> 31));
}

inline __attribute__((always_inline)) uint32_t draw(uint32_t key, int64_t c) {
    uint32_t x = key + static_cast<uint32_t>(c) * 0x9E3779B9u;
    x ^= x >> 16; x *= 0x85EBCA6Bu; x ^= x >> 13; x *= 0xC2B2AE35u; x ^= x >> 16;
    return x;
}

// z[j] = value if weight j of row i of problem p is kept, else 0, for the T columns.
inline __attribute__((always_inline)) void keep_row(float *z, uint64_t seed, int64_t p, int64_t i, int64_t T,
                                                    uint32_t thr, float value) {
    uint32_t key = row_key(seed, p, i);
    int64_t half = T / 2;
    for (int64_t c = 0; c < half; c++) {
        uint32_t x = draw(key, c);
        z[c] = (x & 0xFFFF) >= thr ? value : 0.0f;
        z[c + half] = (x >> 16) >= thr ? value : 0.0f;
    }
    if (T & 1) z[T - 1] = (draw(key, T - 1) & 0xFFFF) >= thr ? value : 0.0f;
}

// A (A, B, T, E) float tensor with a unit-stride last dimension, as the kernels read it.
struct View {
    float *data;
    int64_t s0, s1, s2, heads;  // strides of A, B, T; heads = B
    float *at(int64_t p) const { return data + (p / heads) * s0 + (p % heads) * s1; }
};

View view_of(const at::Tensor &t) {
    return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), t.size(1)};
}

struct Dropout {
    uint64_t seed;
    uint32_t thr;  // 0: no dropout
};

template <int E>
void transpose(const float *x, int64_t rs, float *xt, int64_t T) {  // (T, E), row stride rs -> (E, T)
    for (int64_t j = 0; j < T; j++)
        for (int d = 0; d < E; d++) xt[d * T + j] = x[j * rs + d];
}

struct ForwardArgs {
    View q, k, v, o;
    float *lse;
    int64_t T;
    float scale;
    Dropout drop;
};

// One function per head size and dropout setting (noinline): each is optimised on its own, so the dropout-free
// kernels compile as they would without dropout in the file.
template <int E, bool D>
__attribute__((noinline)) void forward_problems(const ForwardArgs &a, int64_t p0, int64_t p1, float *buf) {
    const int64_t T = a.T;
    float *kT = buf, *vT = buf + E * T, *s = buf + 2 * E * T, *z = s + T;
    const float keep = 1.0f - a.drop.thr * 0x1p-16f;
    for (int64_t p = p0; p < p1; p++) {
        const float *qp = a.q.at(p);
        float *op = a.o.at(p);
        transpose<E>(a.k.at(p), a.k.s2, kT, T);
        transpose<E>(a.v.at(p), a.v.s2, vT, T);
        for (int64_t i = 0; i < T; i++) {
            float qs[E], acc[E], m = -FLT_MAX, l = 0.0f;
            if (D) keep_row(z, a.drop.seed, p, i, T, a.drop.thr, 1.0f);
            for (int d = 0; d < E; d++) { qs[d] = qp[i * a.q.s2 + d] * a.scale; acc[d] = 0.0f; }
            for (int64_t j = 0; j < T; j++) {  // scores of row i and their maximum
                float x = 0.0f;
                for (int d = 0; d < E; d++) x += qs[d] * kT[d * T + j];
                s[j] = x;
                m = x > m ? x : m;
            }
            for (int64_t j = 0; j < T; j++) {  // unnormalised probabilities, their sum, and p @ v (kept p only)
                float e = exp_le0(s[j] - m);
                l += e;
                if (D) e *= z[j];
                for (int d = 0; d < E; d++) acc[d] += e * vT[d * T + j];
            }
            const float norm = D ? l * keep : l;
            for (int d = 0; d < E; d++) op[i * a.o.s2 + d] = acc[d] / norm;
            a.lse[p * T + i] = m + std::log(l);
        }
    }
}

struct BackwardArgs {
    View q, k, v, o, go, dq, dk, dv;
    const float *lse;
    int64_t T;
    float scale;
    Dropout drop;
};

// dS = P * (dO v^T - rowsum(dO * O)); dq = scale dS k, dk = scale dS^T q, dv = P^T dO. Row by row: dq is a
// reduction over the keys, dk and dv are accumulated over the rows in (E, T) buffers of the problem. With dropout
// (Z: the kept weights times 1 / (1 - dropout), O the dropped output): dv = (P Z)^T dO and
// dS = P * (Z dO v^T - rowsum(dO * O)).
template <int E, bool D>
__attribute__((noinline)) void backward_problems(const BackwardArgs &a, int64_t p0, int64_t p1, float *buf) {
    const int64_t T = a.T;
    float *kT = buf, *vT = buf + E * T, *dkT = buf + 2 * E * T, *dvT = buf + 3 * E * T;
    float *prob = buf + 4 * E * T, *ds = prob + T, *z = ds + T;
    const float rescale = 1.0f / (1.0f - a.drop.thr * 0x1p-16f);
    for (int64_t p = p0; p < p1; p++) {
        const float *qp = a.q.at(p), *op = a.o.at(p), *gp = a.go.at(p);
        float *dqp = a.dq.at(p), *dkp = a.dk.at(p), *dvp = a.dv.at(p);
        transpose<E>(a.k.at(p), a.k.s2, kT, T);
        transpose<E>(a.v.at(p), a.v.s2, vT, T);
        std::memset(dkT, 0, sizeof(float) * 2 * E * T);  // dkT and dvT
        for (int64_t i = 0; i < T; i++) {
            const float *qi = qp + i * a.q.s2, *gi = gp + i * a.go.s2, *oi = op + i * a.o.s2;
            float qs[E], g[E], rowdot = 0.0f, li = a.lse[p * T + i];
            if (D) keep_row(z, a.drop.seed, p, i, T, a.drop.thr, rescale);
            for (int d = 0; d < E; d++) { qs[d] = qi[d] * a.scale; g[d] = gi[d]; rowdot += gi[d] * oi[d]; }
            if (D) {
#pragma GCC ivdep
                for (int64_t j = 0; j < T; j++) {  // prob, ds and z are separate parts of buf
                    float x = 0.0f, y = 0.0f;
                    for (int d = 0; d < E; d++) { x += qs[d] * kT[d * T + j]; y += g[d] * vT[d * T + j]; }
                    float pj = exp_le0(x - li);
                    prob[j] = pj * z[j];
                    ds[j] = pj * (z[j] * y - rowdot);
                }
            } else {
                for (int64_t j = 0; j < T; j++) {
                    float x = 0.0f, y = 0.0f;
                    for (int d = 0; d < E; d++) { x += qs[d] * kT[d * T + j]; y += g[d] * vT[d * T + j]; }
                    float pj = exp_le0(x - li);
                    prob[j] = pj;
                    ds[j] = pj * (y - rowdot);
                }
            }
            for (int d = 0; d < E; d++) {
                float acc = 0.0f;
                for (int64_t j = 0; j < T; j++) {
                    acc += ds[j] * kT[d * T + j];
                    dkT[d * T + j] += ds[j] * qs[d];  // qs already carries the scale of dk
                    dvT[d * T + j] += prob[j] * g[d];
                }
                dqp[i * a.dq.s2 + d] = acc * a.scale;
            }
        }
        for (int64_t j = 0; j < T; j++)
            for (int d = 0; d < E; d++) {
                dkp[j * a.dk.s2 + d] = dkT[d * T + j];
                dvp[j * a.dv.s2 + d] = dvT[d * T + j];
            }
    }
}

using ForwardFn = void (*)(const ForwardArgs &, int64_t, int64_t, float *);
using BackwardFn = void (*)(const BackwardArgs &, int64_t, int64_t, float *);

template <bool D>
ForwardFn forward_for(int64_t E) {
    switch (E) {
        case 1: return forward_problems<1, D>;
        case 2: return forward_problems<2, D>;
        case 3: return forward_problems<3, D>;
        case 4: return forward_problems<4, D>;
        case 5: return forward_problems<5, D>;
        case 6: return forward_problems<6, D>;
        case 7: return forward_problems<7, D>;
    }
    TORCH_CHECK(false, "small_head_attention: head size ", E, " is not in 1..7");
    return nullptr;
}

template <bool D>
BackwardFn backward_for(int64_t E) {
    switch (E) {
        case 1: return backward_problems<1, D>;
        case 2: return backward_problems<2, D>;
        case 3: return backward_problems<3, D>;
        case 4: return backward_problems<4, D>;
        case 5: return backward_problems<5, D>;
        case 6: return backward_problems<6, D>;
        case 7: return backward_problems<7, D>;
    }
    TORCH_CHECK(false, "small_head_attention: head size ", E, " is not in 1..7");
    return nullptr;
}

// Runs fn(p0, p1, buf) over the P problems on torch's intra-op threads, each with its own buffer of buf_floats.
// A few blocks per thread, handed out as threads free up: on a shared machine one descheduled thread does not leave
// the others waiting at the end with half of its work still to do.
template <typename Fn>
void over_problems(int64_t P, int64_t buf_floats, const Fn &fn) {
    constexpr int64_t kBlocksPerThread = 8;
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P));
    const int64_t step = threads > 1 ? (P + threads * kBlocksPerThread - 1) / (threads * kBlocksPerThread) : P;
    const int64_t blocks = (P + step - 1) / step;
    std::atomic<int64_t> next{0};
    const CallerFpMode fp_mode;
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        const auto in_callers_mode = fp_mode.apply();
        std::unique_ptr<float[]> buf(new float[buf_floats]);
        for (int64_t b = next++; b < blocks; b = next++) fn(b * step, std::min(P, (b + 1) * step), buf.get());
    });
}

// The dropout of a call: dropout_p rounded to a multiple of 2^-16 (at least one step, below 1), and the seed, a
// 0-dim int64 tensor (its bits, read as unsigned), drawn by the caller from torch's generator.
Dropout dropout_of(double dropout_p, const std::optional<at::Tensor> &seed) {
    TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "attention dropout must be in [0, 1), got ", dropout_p);
    if (dropout_p == 0.0) return {0, 0};
    TORCH_CHECK(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong,
                "small_head_attention: dropout needs a seed, a one-element int64 tensor");
    const double steps = std::nearbyint(dropout_p * 65536.0);  // ties to even, as Python's round()
    const auto thr = static_cast<uint32_t>(std::min(65535.0, std::max(1.0, steps)));
    return {static_cast<uint64_t>(seed->item<int64_t>()), thr};
}

// The kernel reads a unit-stride last dimension; anything else is copied once.
at::Tensor readable(const at::Tensor &t) {
    TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu(),
                "small_head_attention takes (A, B, T, E) float32 CPU tensors, got ", t.sizes(), " ",
                t.scalar_type(), " on ", t.device());
    return t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous();
}

// An (A, B, T, E) tensor laid out as (A, T, B, E): for (N, h, T, hs) attention, merging the heads back into
// (N, T, h * hs) is then a view, not a copy.
at::Tensor new_output(const at::Tensor &like) {
    return at::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options()).transpose(1, 2);
}

void run_forward(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &out,
                 const at::Tensor &lse, Dropout drop) {
    const int64_t E = q.size(3), T = q.size(2), P = q.size(0) * q.size(1);
    TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "small_head_attention: q, k, v of equal shapes");
    if (P == 0 || T == 0) return;
    ForwardArgs args{view_of(q), view_of(k), view_of(v), view_of(out), lse.data_ptr<float>(), T,
                     static_cast<float>(1.0 / std::sqrt(static_cast<double>(E))), drop};
    ForwardFn fn = drop.thr ? forward_for<true>(E) : forward_for<false>(E);
    over_problems(P, (2 * E + 2) * T, [&](int64_t p0, int64_t p1, float *buf) { fn(args, p0, p1, buf); });
}

void run_backward(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &out,
                  const at::Tensor &lse, const at::Tensor &grad_out, const at::Tensor &dq, const at::Tensor &dk,
                  const at::Tensor &dv, Dropout drop) {
    const int64_t E = q.size(3), T = q.size(2), P = q.size(0) * q.size(1);
    TORCH_CHECK(grad_out.sizes() == q.sizes(), "small_head_attention_backward: grad_out of q's shape");
    TORCH_CHECK(lse.is_contiguous() && lse.numel() == P * T, "small_head_attention_backward: lse of (A, B, T)");
    if (P == 0 || T == 0) return;
    BackwardArgs args{view_of(q),  view_of(k),  view_of(v),  view_of(out), view_of(grad_out),
                      view_of(dq), view_of(dk), view_of(dv), lse.data_ptr<float>(), T,
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(E))), drop};
    BackwardFn fn = drop.thr ? backward_for<true>(E) : backward_for<false>(E);
    over_problems(P, (4 * E + 3) * T, [&](int64_t p0, int64_t p1, float *buf) { fn(args, p0, p1, buf); });
}

// --- the operators ----------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor &q_in, const at::Tensor &k_in,
                                                     const at::Tensor &v_in, double dropout_p,
                                                     const std::optional<at::Tensor> &seed) {
    at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in);
    at::Tensor out = new_output(q);
    at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());  // log-sum-exp of each row of scores
    run_forward(q, k, v, out, lse, dropout_of(dropout_p, seed));
    return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor &grad_out, const at::Tensor &q_in, const at::Tensor &k_in, const at::Tensor &v_in,
    const at::Tensor &out, const at::Tensor &lse, double dropout_p, const std::optional<at::Tensor> &seed) {
    at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in);
    at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options()),
               dv = at::empty(q.sizes(), q.options());
    run_backward(q, k, v, readable(out), lse.contiguous(), readable(grad_out), dq, dk, dv,
                 dropout_of(dropout_p, seed));
    return {dq, dk, dv};
}

// q, k or v (i = 0, 1, 2) as a view of the (N, T, 3, h, E) projection: (N, h, T, E).
at::Tensor part(const at::Tensor &qkv, int64_t i) { return qkv.select(2, i).transpose(1, 2); }

at::Tensor readable_packed(const at::Tensor &qkv) {
    TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "small_head_attention_packed takes (N, T, 3, h, E), got ",
                qkv.sizes());
    return qkv.stride(4) == 1 || qkv.size(4) == 1 ? qkv : qkv.contiguous();
}

std::tuple<at::Tensor, at::Tensor> attention_packed_forward(const at::Tensor &qkv_in, double dropout_p,
                                                            const std::optional<at::Tensor> &seed) {
    at::Tensor qkv = readable_packed(qkv_in);
    at::Tensor q = readable(part(qkv, 0)), k = readable(part(qkv, 1)), v = readable(part(qkv, 2));
    at::Tensor out = new_output(q);
    at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
    run_forward(q, k, v, out, lse, dropout_of(dropout_p, seed));
    return {out, lse};
}

// The gradient of the whole projection, written in one piece (no copies of q, k, v or of their gradients).
at::Tensor attention_packed_backward(const at::Tensor &grad_out, const at::Tensor &qkv_in, const at::Tensor &out,
                                     const at::Tensor &lse, double dropout_p, const std::optional<at::Tensor> &seed) {
    at::Tensor qkv = readable_packed(qkv_in);
    at::Tensor grad = at::empty(qkv.sizes(), qkv.options());
    run_backward(readable(part(qkv, 0)), readable(part(qkv, 1)), readable(part(qkv, 2)), readable(out),
                 lse.contiguous(), readable(grad_out), part(grad, 0), part(grad, 1), part(grad, 2),
                 dropout_of(dropout_p, seed));
    return grad;
}

// The keep mask (P, T, T) of problems 0..P-1 that a call with this dropout_p and seed applies: for tests.
at::Tensor dropout_mask(int64_t problems, int64_t length, double dropout_p, const at::Tensor &seed) {
    at::Tensor mask = at::ones({problems, length, length}, at::kFloat);
    Dropout drop = dropout_of(dropout_p, seed);
    if (drop.thr == 0) return mask.to(at::kBool);
    float *data = mask.data_ptr<float>();
    for (int64_t p = 0; p < problems; p++)
        for (int64_t i = 0; i < length; i++) keep_row(data + (p * length + i) * length, drop.seed, p, i, length,
                                                      drop.thr, 1.0f);
    return mask.to(at::kBool);
}

}  // namespace

TORCH_LIBRARY(simmtm, m) {
    m.set_python_module("simmtm.method.attention_kernel");  // where the fake and autograd registrations live
    m.def("small_head_attention(Tensor q, Tensor k, Tensor v, float dropout_p=0.0, Tensor? seed=None) "
          "-> (Tensor out, Tensor lse)");
    m.def("small_head_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
          "float dropout_p, Tensor? seed) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
    m.def("small_head_attention_packed(Tensor qkv, float dropout_p=0.0, Tensor? seed=None) "
          "-> (Tensor out, Tensor lse)");
    m.def("small_head_attention_packed_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, "
          "float dropout_p, Tensor? seed) -> Tensor grad_qkv");
    m.def("small_head_dropout_mask(int problems, int length, float dropout_p, Tensor seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(simmtm, CPU, m) {
    m.impl("small_head_attention", &attention_forward);
    m.impl("small_head_attention_backward", &attention_backward);
    m.impl("small_head_attention_packed", &attention_packed_forward);
    m.impl("small_head_attention_packed_backward", &attention_packed_backward);
    m.impl("small_head_dropout_mask", &dropout_mask);
}
