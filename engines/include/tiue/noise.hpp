// z_T in C++, bit-identical to the Python runtime's (tiue_export.sampling.initial_noise, the
// manifest's "noise" entry): image j of a call draws
//   numpy.random.default_rng(seeds[j]).standard_normal(latent_shape, dtype=numpy.float32)
// i.e. SeedSequence(seed) -> PCG64 (XSL-RR 128/64) -> numpy's 256-layer float32 ziggurat.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "tiue/tensor.hpp"

namespace tiue {

/// numpy.random.SeedSequence(entropy, pool_size=4).generate_state(n_words) for a non-negative
/// integer seed given as its 32-bit words, lowest first (numpy's _int_to_uint32_array).
std::vector<uint32_t> seed_sequence_state(const std::vector<uint32_t>& entropy, std::size_t n_words);

/// numpy's PCG64 bit generator (the 128-bit LCG with the XSL-RR output), seeded as
/// numpy.random.PCG64(seed) seeds it, with numpy's next_uint32 (two 32-bit halves per draw).
class Pcg64 {
 public:
  explicit Pcg64(uint64_t seed);
  /// A seed wider than 64 bits, as its 32-bit words lowest first.
  explicit Pcg64(const std::vector<uint32_t>& seed_words);

  uint64_t next_uint64();
  uint32_t next_uint32();
  /// (next_uint32 >> 8) / 2^24, numpy's next_float.
  float next_float();

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
  bool has_uint32_ = false;
  uint32_t uinteger_ = 0;
};

/// One N(0, 1) float32 draw: numpy's random_standard_normal_f (ziggurat, 256 layers).
float standard_normal_f(Pcg64& rng);

/// z_T for each seed: float32 (len(seeds), C, h, w), image j from its own generator seeded with
/// seeds[j], filled in C order. Equal to tiue_export.sampling.initial_noise(seeds, latent).
Tensor initial_noise(const std::vector<uint64_t>& seeds, const std::array<int64_t, 3>& latent);

}  // namespace tiue
