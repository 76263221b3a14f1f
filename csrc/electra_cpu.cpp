// CPU kernels of electra-fast: the fused epilogues of the generator head, the chunked Gumbel-max sampler
// (contract §3), REPLACE and the RTD loss. Plain pybind11 over data pointers, no libtorch link (contract §7): the
// Python side passes tensor.data_ptr() values and shapes, and keeps the tensors alive during the call.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace py = pybind11;

namespace {

constexpr int64_t kChunk = 128;  // contract §3: canonical sampler chunk, independent of any tile size
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
T* ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }

// ---------------------------------------------------------------------------------------------------------
// Random numbers: Philox4x32-10 (Random123), counter (j >> 2, row, stream, 0), word j & 3 (contract §3).
struct Words { uint32_t w[4]; };

inline Words philox4x32_10(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0, p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t hi0 = p0 >> 32, lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = p1 >> 32, lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Triton's uint_to_uniform_float: the word as int32, negatives folded by ~x, times the largest scale that
// keeps the product below 1 in float32.
inline float uniform_from_word(uint32_t word) {
  int32_t x;
  std::memcpy(&x, &word, sizeof x);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

inline float gumbel(uint64_t seed, int64_t row, uint32_t stream, int64_t j) {
  const Words r = philox4x32_10(seed, static_cast<uint32_t>(j >> 2), static_cast<uint32_t>(row), stream, 0);
  const float u = uniform_from_word(r.w[j & 3]);
  return -std::log(-std::log(u));
}

// ---------------------------------------------------------------------------------------------------------
// exp for the hot loops: Cody-Waite reduction and a degree-6 polynomial (Cephes' expf), about 1 ulp, written
// so that the compiler vectorises the loops that call it (libm's expf does not vectorise without
// -ffast-math). Exact 0 below -87.3 (the float32 denormal range is not worth a branch); NaN stays NaN.
inline float fast_exp(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return x < -87.3f ? 0.0f : (x != x ? x : y);
}

// Sum of exp((x[k] - m) / t) over a run of logits, NaN counted as -inf (weight 0).
inline float sum_exp(const float* x, int64_t n, float m, float t) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) {
    const float e = fast_exp(x[k] / t - m / t);
    s += x[k] == x[k] ? e : 0.0f;
  }
  return s;
}

inline float log_mass(float m, float s) { return m == kNegInf ? kNegInf : m + std::log(s); }

// ---------------------------------------------------------------------------------------------------------
// Fused head, forward epilogue over one vocabulary tile of logits [rows, width] (bias included), ids
// [v0, v0 + width). v0 is a multiple of 128, so the tile holds whole sampler chunks. Per row it merges into
// the running state: max and sum of exp (the loss's log-sum-exp), the target logit, the argmax, a NaN flag,
// and writes the tile's sampler chunk log-masses of z = logits / temperature.
void head_forward_tile(uintptr_t logits_p, int64_t rows, int64_t width, int64_t v0, uintptr_t targets_p,
                       int64_t ignore_index, double temperature, bool disallow_correct, uintptr_t run_max_p,
                       uintptr_t run_sum_p, uintptr_t target_logit_p, uintptr_t best_p, uintptr_t best_id_p,
                       uintptr_t nan_p, uintptr_t chunk_lse_p, int64_t n_chunks, int num_threads) {
  const float* logits = ptr<float>(logits_p);
  const int64_t* targets = ptr<int64_t>(targets_p);
  float *run_max = ptr<float>(run_max_p), *run_sum = ptr<float>(run_sum_p);
  float *target_logit = ptr<float>(target_logit_p), *best = ptr<float>(best_p);
  int64_t* best_id = ptr<int64_t>(best_id_p);
  uint8_t* nan_seen = ptr<uint8_t>(nan_p);
  float* chunk_lse = ptr<float>(chunk_lse_p);
  const float t = static_cast<float>(temperature);
  const bool unit_temperature = t == 1.0f;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * width;
    const int64_t target = targets[r];
    const bool ignored = target == ignore_index;
    if (!ignored && target >= v0 && target < v0 + width) target_logit[r] = x[target - v0];
    float m_run = run_max[r], s_run = run_sum[r];
    for (int64_t a = 0; a < width; a += kChunk) {
      const int64_t n = std::min(kChunk, width - a);
      const float* xc = x + a;
      float m = kNegInf;
      int nan = 0;
      // Without the simd reduction the compiler keeps this loop scalar (a float max is not associative to it).
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t k = 0; k < n; ++k) {
        m = xc[k] > m ? xc[k] : m;
        nan |= xc[k] != xc[k];
      }
      if (nan) nan_seen[r] = 1;
      if (m > best[r]) {
        int64_t k = 0;
        while (!(xc[k] == m)) ++k;
        best[r] = m;
        best_id[r] = v0 + a + k;
      }
      // The loss's running log-sum-exp, merged one chunk at a time.
      const float s = sum_exp(xc, n, m, 1.0f);
      if (m != kNegInf) {
        if (m > m_run) {
          s_run = s_run * std::exp(m_run - m) + s;
          m_run = m;
        } else {
          s_run += s * std::exp(m - m_run);
        }
      }
      // The sampler's chunk log-mass over z = x / t, the target excluded under disallow_correct.
      const int64_t c = (v0 + a) / kChunk;
      const int64_t tk = target - (v0 + a);
      float lse;
      if (disallow_correct && !ignored && tk >= 0 && tk < n) {
        float mz = kNegInf;
        for (int64_t k = 0; k < n; ++k)
          if (k != tk) mz = xc[k] > mz ? xc[k] : mz;
        float sz = 0.0f;
        if (mz != kNegInf)
          for (int64_t k = 0; k < n; ++k)
            if (k != tk && xc[k] == xc[k]) sz += fast_exp(xc[k] / t - mz / t);
        lse = log_mass(mz / t, sz);
      } else if (unit_temperature) {
        lse = log_mass(m, s);
      } else {
        lse = log_mass(m / t, m == kNegInf ? 0.0f : sum_exp(xc, n, m, t));
      }
      chunk_lse[r * n_chunks + c] = lse;
    }
    run_max[r] = m_run;
    run_sum[r] = s_run;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Sampler (contract §3). Stage 1 picks a chunk by Gumbel-max over the chunk log-masses; stage 2 picks an id inside
// it by Gumbel-max over its 128 logits, read from `logits` [rows, V] when given, else recomputed as
// hidden[r] . weight[v] + bias[v] (all float32, row-major). Ties go to the lowest index; if no candidate has a
// finite key the sample is the lowest allowed id.
void sample_rows(uintptr_t chunk_lse_p, int64_t rows, int64_t n_chunks, int64_t vocab, uint64_t seed,
                 double temperature, uintptr_t targets_p, int64_t ignore_index, bool disallow_correct,
                 uintptr_t logits_p, uintptr_t hidden_p, uintptr_t weight_p, uintptr_t bias_p, int64_t hidden_size,
                 uintptr_t sampled_p, int num_threads) {
  const float* chunk_lse = ptr<float>(chunk_lse_p);
  const int64_t* targets = ptr<int64_t>(targets_p);
  const float* logits = ptr<float>(logits_p);
  const float *hidden = ptr<float>(hidden_p), *weight = ptr<float>(weight_p), *bias = ptr<float>(bias_p);
  int64_t* sampled = ptr<int64_t>(sampled_p);
  const float t = static_cast<float>(temperature);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    const bool excluding = disallow_correct && targets[r] != ignore_index;
    const int64_t excluded = excluding ? targets[r] : -1;
    const int64_t fallback = excluded == 0 ? 1 : 0;

    const float* lse = chunk_lse + r * n_chunks;
    float best_key = kNegInf;
    int64_t chunk = -1;
    for (int64_t c = 0; c < n_chunks; ++c) {
      if (!(lse[c] > kNegInf)) continue;  // -inf and NaN never win
      const float key = lse[c] + gumbel(seed, r, 0, c);
      if (key > best_key) {
        best_key = key;
        chunk = c;
      }
    }
    int64_t choice = -1;
    if (chunk >= 0) {
      const int64_t first = chunk * kChunk, last = std::min(first + kChunk, vocab);
      best_key = kNegInf;
      for (int64_t v = first; v < last; ++v) {
        if (v == excluded) continue;
        float logit;
        if (logits != nullptr) {
          logit = logits[r * vocab + v];
        } else {
          const float* h = hidden + r * hidden_size;
          const float* w = weight + v * hidden_size;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t k = 0; k < hidden_size; ++k) dot += h[k] * w[k];
          logit = bias != nullptr ? dot + bias[v] : dot;
        }
        const float z = logit / t;
        if (!(z > kNegInf)) continue;
        const float key = z + gumbel(seed, r, 1, v);
        if (key > best_key) {
          best_key = key;
          choice = v;
        }
      }
    }
    sampled[r] = choice >= 0 ? choice : fallback;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Fused head, backward epilogue: overwrites a logits tile [rows, width] (ids [v0, v0 + width)) in place with
// d loss / d logits = (softmax - onehot(target)) * row_scale; ignored rows get exact zeros. stats [rows, 2] holds
// each row's max and log of the sum of exp(x - max): softmax = exp((x - max) - log_sum) keeps the precision of
// confident rows, which exp(x - logsumexp) would lose to the rounding of logsumexp.
void head_backward_tile(uintptr_t logits_p, int64_t rows, int64_t width, int64_t v0, uintptr_t targets_p,
                        int64_t ignore_index, uintptr_t stats_p, uintptr_t row_scale_p, int num_threads) {
  float* g = ptr<float>(logits_p);
  const int64_t* targets = ptr<int64_t>(targets_p);
  const float *stats = ptr<float>(stats_p), *row_scale = ptr<float>(row_scale_p);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    float* x = g + r * width;
    const int64_t target = targets[r];
    if (target == ignore_index) {
      std::memset(x, 0, sizeof(float) * width);
      continue;
    }
    const float row_max = stats[2 * r], log_sum = stats[2 * r + 1], scale = row_scale[r];
#pragma omp simd
    for (int64_t k = 0; k < width; ++k) x[k] = fast_exp((x[k] - row_max) - log_sum) * scale;
    if (target >= v0 && target < v0 + width) x[target - v0] -= scale;
  }
}

// ---------------------------------------------------------------------------------------------------------
// REPLACE: ids[p] = sampled[i] at p = positions[i] (a flat index of a [B, T] tensor with strides s0, s1),
// is_replaced[p] = (new id != old id). Slots whose valid flag is false are skipped unread (valid_p 0: none
// skipped). The caller has checked every value of the others first.
void replace_ids(uintptr_t ids_p, int64_t seq_len, int64_t stride0, int64_t stride1, uintptr_t positions_p,
                 uintptr_t sampled_p, uintptr_t valid_p, int64_t n, uintptr_t is_replaced_p) {
  int64_t* ids = ptr<int64_t>(ids_p);
  const int64_t *positions = ptr<int64_t>(positions_p), *sampled = ptr<int64_t>(sampled_p);
  const bool* valid = ptr<bool>(valid_p);
  bool* is_replaced = ptr<bool>(is_replaced_p);
  for (int64_t i = 0; i < n; ++i) {
    if (valid != nullptr && !valid[i]) continue;
    const int64_t p = positions[i];
    int64_t& slot = ids[(p / seq_len) * stride0 + (p % seq_len) * stride1];
    is_replaced[p] = sampled[i] != slot;
    slot = sampled[i];
  }
}

// ---------------------------------------------------------------------------------------------------------
// RTD loss over n tokens (float32 logits, float32 0/1 labels and weights): per-token weighted BCE with
// logits into `loss` and its gradient d(Σ w·BCE)/d logit = w · (sigmoid(x) - y) into `grad`.
void rtd_loss_forward(uintptr_t logits_p, uintptr_t labels_p, uintptr_t weights_p, int64_t n, uintptr_t loss_p,
                      uintptr_t grad_p, int num_threads) {
  const float *x = ptr<float>(logits_p), *y = ptr<float>(labels_p), *w = ptr<float>(weights_p);
  float *loss = ptr<float>(loss_p), *grad = ptr<float>(grad_p);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t i = 0; i < n; ++i) {
    // max(x, 0) - x*y + log1p(exp(-|x|)): stable for any finite x.
    const float xi = x[i];
    const float bce = (xi > 0.0f ? xi : 0.0f) - xi * y[i] + std::log1p(std::exp(-std::fabs(xi)));
    const float sig = xi >= 0.0f ? 1.0f / (1.0f + std::exp(-xi)) : std::exp(xi) / (1.0f + std::exp(xi));
    // Padding (w = 0) gets exact zeros, even where its logit is not finite.
    loss[i] = w[i] != 0.0f ? w[i] * bce : 0.0f;
    grad[i] = w[i] != 0.0f ? w[i] * (sig - y[i]) : 0.0f;
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "electra-fast CPU kernels (pointer-level; use electra_fast's API, not this module)";
  m.def("head_forward_tile", &head_forward_tile);
  m.def("sample_rows", &sample_rows);
  m.def("head_backward_tile", &head_backward_tile);
  m.def("replace_ids", &replace_ids);
  m.def("rtd_loss_forward", &rtd_loss_forward);
}
