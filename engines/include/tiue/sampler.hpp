// The one-pass sampler's arithmetic outside the graphs, rounded as tiue_export.sampling does it
// in numpy (float32, the same order of operations).
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "tiue/tensor.hpp"

namespace tiue {

/// Paper Eq. 11: z0 = S z_T + sum_k E[k] eps[k*B:(k+1)*B] (eps holds K x B predictions,
/// timestep-major). Throws InputError when eps is not K x B rows of z_T's shape or either is not
/// float32.
Tensor combine_one_pass(const Tensor& noise, const Tensor& eps, double S, const std::vector<double>& E);

/// VAE output in [-1, 1], NCHW float32, to uint8 NHWC: clip(floor(x * 127.5 + 128), 0, 255).
std::vector<uint8_t> to_uint8_images(const Tensor& images);

/// Whether every element of a float32 tensor is finite (int64 tensors always are).
bool all_finite(const Tensor& t);

/// Write one H x W RGB uint8 image (HWC) as binary PPM (P6), atomically.
void write_ppm(const std::filesystem::path& path, const uint8_t* hwc, int64_t height, int64_t width);

}  // namespace tiue
