#include "tiue/noise.hpp"

#include <cmath>

#include "tiue/error.hpp"

namespace tiue {

namespace {

using u128 = unsigned __int128;

// -- numpy.random.SeedSequence (O'Neill's seed_seq hashing, as numpy's bit_generator.pyx) ------
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr unsigned kXShift = 16;  // half of a 32-bit word
constexpr std::size_t kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// -- PCG64: 128-bit LCG, XSL-RR output (numpy/random/src/pcg64) ---------------------------------
constexpr u128 kPcgMultiplier = (static_cast<u128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

std::vector<uint32_t> words_of(uint64_t seed) {
  if (seed <= 0xffffffffULL) return {static_cast<uint32_t>(seed)};
  return {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

// -- the float32 ziggurat's tables (numpy's ki_float, wi_float, fi_float) ------------------------
// Marsaglia & Tsang's 256-layer ziggurat for f(x) = exp(-x^2/2): r is the base strip's edge and
// v every layer's area. x[255] = r and x[i-1] = f^-1(v / x[i] + f(x[i])); a layer's draw is
// rabs * w[i] with rabs 23 bits, accepted at once when rabs < k[i]. Computed in double as
// numpy's tables were (checked entry for entry against numpy's ziggurat_constants.h).
constexpr double kZigR = 3.6541528853610087963519472518;
constexpr double kZigV = 0.00492867323399;
constexpr double kTwo23 = 8388608.0;

struct Ziggurat {
  uint32_t k[256];
  float w[256];
  float f[256];
  float r, inv_r;
};

const Ziggurat& ziggurat() {
  static const Ziggurat z = [] {
    Ziggurat t{};
    auto f = [](double x) { return std::exp(-0.5 * x * x); };
    double x[256];
    x[255] = kZigR;
    for (int i = 255; i > 1; --i) x[i - 1] = std::sqrt(-2.0 * std::log(kZigV / x[i] + f(x[i])));
    t.k[0] = static_cast<uint32_t>(std::nearbyint(kTwo23 * kZigR * f(kZigR) / kZigV));
    t.w[0] = static_cast<float>(kZigV / f(kZigR) / kTwo23);
    t.f[0] = 1.0f;
    t.k[1] = 0;
    for (int i = 1; i < 256; ++i) {
      if (i > 1) t.k[i] = static_cast<uint32_t>(std::nearbyint(kTwo23 * x[i - 1] / x[i]));
      t.w[i] = static_cast<float>(x[i] / kTwo23);
      t.f[i] = static_cast<float>(f(x[i]));
    }
    t.r = static_cast<float>(kZigR);
    t.inv_r = static_cast<float>(1.0 / kZigR);
    return t;
  }();
  return z;
}

}  // namespace

std::vector<uint32_t> seed_sequence_state(const std::vector<uint32_t>& entropy, std::size_t n_words) {
  uint32_t pool[kPoolSize];
  uint32_t hash_const = kInitA;
  for (std::size_t i = 0; i < kPoolSize; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
  for (std::size_t src = 0; src < kPoolSize; ++src)
    for (std::size_t dst = 0; dst < kPoolSize; ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
  for (std::size_t src = kPoolSize; src < entropy.size(); ++src)
    for (std::size_t dst = 0; dst < kPoolSize; ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src], hash_const));

  std::vector<uint32_t> state(n_words);
  uint32_t h = kInitB;
  for (std::size_t i = 0; i < n_words; ++i) {
    uint32_t v = pool[i % kPoolSize];
    v ^= h;
    h *= kMultB;
    v *= h;
    v ^= v >> kXShift;
    state[i] = v;
  }
  return state;
}

Pcg64::Pcg64(uint64_t seed) : Pcg64(words_of(seed)) {}

Pcg64::Pcg64(const std::vector<uint32_t>& seed_words) {
  // PCG64(seed): generate_state(4, uint64) -> initstate = s[0]:s[1], initseq = s[2]:s[3]
  // (high:low), each uint64 the little-endian view of two uint32 words.
  const auto w = seed_sequence_state(seed_words.empty() ? std::vector<uint32_t>{0} : seed_words, 8);
  uint64_t s[4];
  for (int i = 0; i < 4; ++i) s[i] = static_cast<uint64_t>(w[2 * i]) | (static_cast<uint64_t>(w[2 * i + 1]) << 32);
  const u128 initstate = (static_cast<u128>(s[0]) << 64) | s[1];
  const u128 initseq = (static_cast<u128>(s[2]) << 64) | s[3];
  state_ = 0;
  inc_ = (initseq << 1) | 1;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += initstate;
  state_ = state_ * kPcgMultiplier + inc_;
}

uint64_t Pcg64::next_uint64() {
  state_ = state_ * kPcgMultiplier + inc_;
  const uint64_t folded = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (folded >> rot) | (folded << ((64 - rot) & 63));
}

uint32_t Pcg64::next_uint32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = next_uint64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next & 0xffffffffULL);
}

float Pcg64::next_float() { return static_cast<float>(next_uint32() >> 8) * (1.0f / 16777216.0f); }

float standard_normal_f(Pcg64& rng) {
  const Ziggurat& z = ziggurat();
  for (;;) {
    const uint32_t r = rng.next_uint32();
    const int idx = static_cast<int>(r & 0xff);
    const bool negative = (r >> 8) & 0x1;
    const uint32_t rabs = (r >> 9) & 0x0007fffff;
    float x = static_cast<float>(rabs) * z.w[idx];
    if (negative) x = -x;
    if (rabs < z.k[idx]) return x;  // the rectangle: ~99.3% of draws
    if (idx == 0) {
      // the tail beyond r (Marsaglia's exponential method; 1 - U avoids log(0))
      for (;;) {
        const float xx = -z.inv_r * std::log1p(-rng.next_float());
        const float yy = -std::log1p(-rng.next_float());
        if (yy + yy > xx * xx) return ((rabs >> 8) & 0x1) ? -(z.r + xx) : z.r + xx;
      }
    }
    // the wedge: numpy compares the float draw with exp() in double
    if ((z.f[idx - 1] - z.f[idx]) * rng.next_float() + z.f[idx] < std::exp(-0.5 * static_cast<double>(x) * static_cast<double>(x))) return x;
  }
}

Tensor initial_noise(const std::vector<uint64_t>& seeds, const std::array<int64_t, 3>& latent) {
  const int64_t per_image = latent[0] * latent[1] * latent[2];
  Tensor t = Tensor::zeros(DType::Float32, {static_cast<int64_t>(seeds.size()), latent[0], latent[1], latent[2]});
  float* out = t.f32();
  for (std::size_t j = 0; j < seeds.size(); ++j) {
    Pcg64 rng(seeds[j]);
    for (int64_t i = 0; i < per_image; ++i) *out++ = standard_normal_f(rng);
  }
  return t;
}

}  // namespace tiue
