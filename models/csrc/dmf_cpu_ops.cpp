// Fused CPU kernels for the candidate side of DTA / DMF serving (models/cpu_ops.py).
//
// Each op replaces a chain of ATen passes over the (H, B, L) or (B, L) tensors of one
// request; the plain ATen chain stays in Python as the reference (models/cpu_ops.py
// `*_reference`) and tests/test_cpu_ops.py compares the two on random and edge inputs.
//
//   dmf_cpu::bucket_softmax(scores (H,B,L), bucket_scores (H,B,M)?, buckets (B,L) long,
//                           num_buckets, with_mass) -> (weights (H,B,L), mass (H,B,M))
//       weights = softmax(scores + gather(bucket_scores, buckets)) over L,
//       mass[h,b,m] = sum_l weights[h,b,l] [buckets[b,l] = m]   (zeros (H,B,0) when not asked)
//     One pass per (h, b) row of L values, which stays in L1 between its three sweeps
//     (max, exp and sum, normalise and scatter), instead of gather, softmax and
//     scatter_add each streaming 7.7 MB (B=1200, L=400, H=4) through memory.
//   dmf_cpu::bucketize_cells(sims (...), base (G) long, thresholds (K,G), half) -> long (...)
//       models.buckets.Bucketizer's table lookup in one pass (cell, base, K compares).
//   dmf_cpu::uniform_histogram(sims (B,L), num_bins) -> (B, num_bins) float counts
//       models.histogram.similarity_histogram without a mask (serving: no padding).
//
// The exp is a Cephes-style polynomial (2^n * p(r), relative error ~2e-7 on [-87, 0])
// written as a plain loop so that the compiler vectorises it; the inputs of exp are
// score - row max <= 0. Each op has a Meta kernel, so torch.export traces through it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) for 8 lanes of x <= 0: 2^n * p(r), n = round(x log2 e), r = x - n ln 2 (Cephes'
// expf polynomial; relative error ~2e-7). Below -87.3 it clamps (exp -> ~1e-38, not 0).
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

inline float exp_nonpositive(float x) {
  alignas(32) float lanes[8] = {x, 0, 0, 0, 0, 0, 0, 0};
  _mm256_store_ps(lanes, exp_nonpositive(_mm256_load_ps(lanes)));
  return lanes[0];
}

inline float horizontal_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float horizontal_sum(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// softmax of one row in place (length >= 1).
inline void softmax_row(float* out, int64_t length) {
  const int64_t vec_end = length - length % 8;
  __m256 peak8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t l = 0; l < vec_end; l += 8) peak8 = _mm256_max_ps(peak8, _mm256_loadu_ps(out + l));
  float peak = horizontal_max(peak8);
  for (int64_t l = vec_end; l < length; ++l) peak = out[l] > peak ? out[l] : peak;
  const __m256 peak_v = _mm256_set1_ps(peak);
  __m256 total8 = _mm256_setzero_ps();
  for (int64_t l = 0; l < vec_end; l += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(out + l), peak_v));
    _mm256_storeu_ps(out + l, e);
    total8 = _mm256_add_ps(total8, e);
  }
  float total = horizontal_sum(total8);
  for (int64_t l = vec_end; l < length; ++l) {
    out[l] = exp_nonpositive(out[l] - peak);
    total += out[l];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / total);
  for (int64_t l = 0; l < vec_end; l += 8) _mm256_storeu_ps(out + l, _mm256_mul_ps(_mm256_loadu_ps(out + l), inv));
  for (int64_t l = vec_end; l < length; ++l) out[l] *= 1.0f / total;
}

// buckets of one candidate -> int32 `index`, checked to lie in [0, num_buckets).
void load_buckets(const int64_t* row, int32_t* index, int64_t length, int64_t num_buckets) {
  int64_t bad = 0;
  for (int64_t l = 0; l < length; ++l) {
    const int64_t v = row[l];
    bad |= static_cast<int64_t>(static_cast<uint64_t>(v) >= static_cast<uint64_t>(num_buckets));
    index[l] = static_cast<int32_t>(v);
  }
  if (bad) {
    for (int64_t l = 0; l < length; ++l) {
      TORCH_CHECK(row[l] >= 0 && row[l] < num_buckets, "bucket_softmax: bucket ", row[l],
                  " at position ", l, " is outside [0, ", num_buckets, ")");
    }
  }
}

std::tuple<at::Tensor, at::Tensor> bucket_softmax_cpu(const at::Tensor& scores,
                                                       const c10::optional<at::Tensor>& bucket_scores,
                                                       const at::Tensor& buckets, int64_t num_buckets,
                                                       bool with_mass) {
  TORCH_CHECK(scores.dim() == 3 && scores.scalar_type() == at::kFloat,
              "bucket_softmax: scores must be float32 (H, B, L)");
  TORCH_CHECK(buckets.dim() == 2 && buckets.scalar_type() == at::kLong,
              "bucket_softmax: buckets must be int64 (B, L)");
  const int64_t heads = scores.size(0), batch = scores.size(1), length = scores.size(2);
  TORCH_CHECK(buckets.size(0) == batch && buckets.size(1) == length,
              "bucket_softmax: buckets ", buckets.sizes(), " do not match scores ", scores.sizes());
  const bool with_keys = bucket_scores.has_value() && bucket_scores->defined();
  if (with_keys) {
    TORCH_CHECK(bucket_scores->dim() == 3 && bucket_scores->scalar_type() == at::kFloat &&
                    bucket_scores->size(0) == heads && bucket_scores->size(1) == batch &&
                    bucket_scores->size(2) == num_buckets,
                "bucket_softmax: bucket_scores must be float32 (H, B, num_buckets)");
  }
  const at::Tensor s = scores.contiguous();
  const at::Tensor bk = buckets.contiguous();
  const at::Tensor qe = with_keys ? bucket_scores->contiguous() : at::Tensor();
  at::Tensor weights = at::empty_like(s);
  at::Tensor mass = at::zeros({heads, batch, with_mass ? num_buckets : 0}, s.options());
  if (length == 0 || batch == 0 || heads == 0) return {weights, mass};
  const float* s_ptr = s.data_ptr<float>();
  const int64_t* bk_ptr = bk.data_ptr<int64_t>();
  const float* qe_ptr = with_keys ? qe.data_ptr<float>() : nullptr;
  float* w_ptr = weights.data_ptr<float>();
  float* m_ptr = mass.data_ptr<float>();
  // One candidate b at a time, all H heads: its buckets are read (and checked) once, as
  // int32, and the bucket mass of the H heads is accumulated
  // together (H floats per bucket, one vector add per position when H = 4).
  at::parallel_for(0, batch, 4, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> index(length);
    std::vector<float> parts(with_mass ? 2 * 4 * num_buckets : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* idx = bk_ptr + b * length;
      load_buckets(idx, index.data(), length, with_keys || with_mass ? num_buckets : INT32_MAX);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = h * batch + b;
        const float* in = s_ptr + row * length;
        float* out = w_ptr + row * length;
        if (with_keys) {
          const float* q = qe_ptr + row * num_buckets;
          // Scalar loads: an 8-lane _mm256_i32gather_ps was no faster in a standalone
          // loop over one request's 1.9M positions on this Zen 3 machine (noisy runs).
          for (int64_t l = 0; l < length; ++l) out[l] = in[l] + q[index[l]];
        } else {
          std::memcpy(out, in, sizeof(float) * length);
        }
        softmax_row(out, length);
      }
      if (!with_mass) continue;
      if (heads == 4) {
        // parts[(l % 2)][m][h]: two interleaved accumulators against repeated buckets.
        std::fill(parts.begin(), parts.end(), 0.0f);
        const float* w0 = w_ptr + (0 * batch + b) * length;
        const float* w1 = w_ptr + (1 * batch + b) * length;
        const float* w2 = w_ptr + (2 * batch + b) * length;
        const float* w3 = w_ptr + (3 * batch + b) * length;
        float* p0 = parts.data();
        float* p1 = parts.data() + 4 * num_buckets;
        int64_t l = 0;
        for (; l + 4 <= length; l += 4) {
          // 4 heads x 4 positions -> 4 vectors of the 4 heads at one position.
          __m128 r0 = _mm_loadu_ps(w0 + l), r1 = _mm_loadu_ps(w1 + l);
          __m128 r2 = _mm_loadu_ps(w2 + l), r3 = _mm_loadu_ps(w3 + l);
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          float* a0 = p0 + 4 * index[l];
          _mm_storeu_ps(a0, _mm_add_ps(_mm_loadu_ps(a0), r0));
          float* a1 = p1 + 4 * index[l + 1];
          _mm_storeu_ps(a1, _mm_add_ps(_mm_loadu_ps(a1), r1));
          float* a2 = p0 + 4 * index[l + 2];
          _mm_storeu_ps(a2, _mm_add_ps(_mm_loadu_ps(a2), r2));
          float* a3 = p1 + 4 * index[l + 3];
          _mm_storeu_ps(a3, _mm_add_ps(_mm_loadu_ps(a3), r3));
        }
        for (; l < length; ++l) {
          float* a = p0 + 4 * index[l];
          a[0] += w0[l];
          a[1] += w1[l];
          a[2] += w2[l];
          a[3] += w3[l];
        }
        for (int64_t h = 0; h < 4; ++h) {
          float* m = m_ptr + (h * batch + b) * num_buckets;
          for (int64_t j = 0; j < num_buckets; ++j) m[j] = p0[4 * j + h] + p1[4 * j + h];
        }
      } else {
        for (int64_t h = 0; h < heads; ++h) {
          const float* w = w_ptr + (h * batch + b) * length;
          float* m = m_ptr + (h * batch + b) * num_buckets;
          for (int64_t l = 0; l < length; ++l) m[index[l]] += w[l];
        }
      }
    }
  });
  return {weights, mass};
}

std::tuple<at::Tensor, at::Tensor> bucket_softmax_meta(const at::Tensor& scores,
                                                        const c10::optional<at::Tensor>& bucket_scores,
                                                        const at::Tensor& buckets, int64_t num_buckets,
                                                        bool with_mass) {
  (void)bucket_scores;
  (void)buckets;
  auto mass_sizes = std::vector<c10::SymInt>{scores.sym_size(0), scores.sym_size(1),
                                             c10::SymInt(with_mass ? num_buckets : 0)};
  return {at::empty_like(scores), at::empty_symint(mass_sizes, scores.options())};
}

at::Tensor bucketize_cells_cpu(const at::Tensor& sims, const at::Tensor& base,
                               const at::Tensor& thresholds, double half) {
  TORCH_CHECK(sims.scalar_type() == at::kFloat, "bucketize_cells: sims must be float32");
  TORCH_CHECK(base.dim() == 1 && base.scalar_type() == at::kLong, "bucketize_cells: base must be int64 (G,)");
  TORCH_CHECK(thresholds.dim() == 2 && thresholds.scalar_type() == at::kFloat &&
                  thresholds.size(1) == base.size(0),
              "bucketize_cells: thresholds must be float32 (K, G)");
  const at::Tensor x = sims.contiguous();
  const at::Tensor bs = base.contiguous();
  const at::Tensor th = thresholds.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kLong));
  const int64_t n = x.numel(), cells = bs.size(0), k_max = th.size(0);
  if (n == 0) return out;
  const float* x_ptr = x.data_ptr<float>();
  const int64_t* b_ptr = bs.data_ptr<int64_t>();
  const float* t_ptr = th.data_ptr<float>();
  int64_t* o_ptr = out.data_ptr<int64_t>();
  const float h = static_cast<float>(half), top = static_cast<float>(cells - 1);
  // base as int32 for the 8-lane gathers (bucket indices are < 2^31).
  std::vector<int32_t> base32(cells);
  for (int64_t g = 0; g < cells; ++g) base32[g] = static_cast<int32_t>(b_ptr[g]);
  at::parallel_for(0, n, 8192, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    const __m256 hv = _mm256_set1_ps(h), zero = _mm256_setzero_ps(), topv = _mm256_set1_ps(top);
    for (; i + 8 <= end; i += 8) {
      // models.buckets._cell: clamp(x * G/2 + G/2, 0, G-1), truncated (NaN -> 0).
      const __m256 x = _mm256_loadu_ps(x_ptr + i);
      const __m256 c = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(x, hv, hv), zero), topv);
      const __m256i cell = _mm256_cvttps_epi32(c);
      __m256i bucket = _mm256_i32gather_epi32(base32.data(), cell, 4);
      for (int64_t k = 0; k < k_max; ++k) {
        const __m256 t = _mm256_i32gather_ps(t_ptr + k * cells, cell, 4);
        // x >= t: all ones (-1) where true; subtracting adds 1.
        bucket = _mm256_sub_epi32(bucket, _mm256_castps_si256(_mm256_cmp_ps(x, t, _CMP_GE_OQ)));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o_ptr + i), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(bucket)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o_ptr + i + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(bucket, 1)));
    }
    for (; i < end; ++i) {
      float c = x_ptr[i] * h + h;
      c = c > 0.0f ? c : 0.0f;
      c = c < top ? c : top;
      const int64_t cell = static_cast<int64_t>(c);
      int64_t bucket = b_ptr[cell];
      for (int64_t k = 0; k < k_max; ++k) bucket += x_ptr[i] >= t_ptr[k * cells + cell];
      o_ptr[i] = bucket;
    }
  });
  return out;
}

at::Tensor bucketize_cells_meta(const at::Tensor& sims, const at::Tensor& base,
                                const at::Tensor& thresholds, double half) {
  (void)base;
  (void)thresholds;
  (void)half;
  return at::empty_like(sims, sims.options().dtype(at::kLong));
}

at::Tensor uniform_histogram_cpu(const at::Tensor& sims, int64_t num_bins) {
  TORCH_CHECK(sims.dim() == 2 && sims.scalar_type() == at::kFloat,
              "uniform_histogram: sims must be float32 (B, L)");
  TORCH_CHECK(num_bins >= 1, "uniform_histogram: num_bins must be >= 1");
  const at::Tensor x = sims.contiguous();
  const int64_t batch = x.size(0), length = x.size(1);
  at::Tensor counts = at::zeros({batch, num_bins}, x.options());
  if (batch == 0 || length == 0) return counts;
  const float* x_ptr = x.data_ptr<float>();
  float* c_ptr = counts.data_ptr<float>();
  const float scale = static_cast<float>(num_bins) / 2.0f;
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* row = x_ptr + b * length;
      float* count = c_ptr + b * num_bins;
      for (int64_t l = 0; l < length; ++l) {
        // models.histogram.similarity_histogram: ((clamp(x, -1, 1) + 1) * n/2).long(), <= n-1
        float v = row[l];
        v = v > -1.0f ? v : -1.0f;
        v = v < 1.0f ? v : 1.0f;
        int64_t bin = static_cast<int64_t>((v + 1.0f) * scale);
        bin = bin < num_bins - 1 ? bin : num_bins - 1;
        count[bin] += 1.0f;
      }
    }
  });
  return counts;
}

at::Tensor uniform_histogram_meta(const at::Tensor& sims, int64_t num_bins) {
  return at::empty_symint({sims.sym_size(0), c10::SymInt(num_bins)}, sims.options());
}

}  // namespace

TORCH_LIBRARY(dmf_cpu, m) {
  m.def("bucket_softmax(Tensor scores, Tensor? bucket_scores, Tensor buckets, int num_buckets, "
        "bool with_mass) -> (Tensor, Tensor)");
  m.def("bucketize_cells(Tensor sims, Tensor base, Tensor thresholds, float half) -> Tensor");
  m.def("uniform_histogram(Tensor sims, int num_bins) -> Tensor");
}

TORCH_LIBRARY_IMPL(dmf_cpu, CPU, m) {
  m.impl("bucket_softmax", &bucket_softmax_cpu);
  m.impl("bucketize_cells", &bucketize_cells_cpu);
  m.impl("uniform_histogram", &uniform_histogram_cpu);
}

TORCH_LIBRARY_IMPL(dmf_cpu, Meta, m) {
  m.impl("bucket_softmax", &bucket_softmax_meta);
  m.impl("bucketize_cells", &bucketize_cells_meta);
  m.impl("uniform_histogram", &uniform_histogram_meta);
}
