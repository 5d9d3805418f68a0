#include "tiue/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "tiue/error.hpp"

namespace tiue {

Tensor combine_one_pass(const Tensor& noise, const Tensor& eps, double S, const std::vector<double>& E) {
  if (noise.dtype() != DType::Float32 || eps.dtype() != DType::Float32 || noise.shape.empty())
    throw InputError("Eq. 11 needs float32 z_T (B, C, h, w) and eps, got " + std::string(dtype_name(noise.dtype())) + " " + shape_str(noise.shape) +
                     " and " + dtype_name(eps.dtype()) + " " + shape_str(eps.shape));
  const int64_t b = noise.shape[0];
  const int64_t k = static_cast<int64_t>(E.size());
  Shape want = noise.shape;
  want[0] = k * b;
  if (eps.shape != want)
    throw InputError("expected " + std::to_string(k) + " x " + std::to_string(b) + " noise predictions of shape " +
                     shape_str(want) + ", got " + shape_str(eps.shape));
  const int64_t n = noise.size();  // elements of one timestep's block (all B images)
  Tensor z = Tensor::zeros(DType::Float32, noise.shape);
  float* out = z.f32();
  const float* zt = noise.f32();
  const float* e = eps.f32();
  // numpy: z = float32(S) * noise; then z = z + float32(E[k]) * eps_k, each rounded to float32.
  const float s = static_cast<float>(S);
  for (int64_t i = 0; i < n; ++i) out[i] = s * zt[i];
  for (int64_t j = 0; j < k; ++j) {
    const float c = static_cast<float>(E[static_cast<std::size_t>(j)]);
    const float* block = e + j * n;
    for (int64_t i = 0; i < n; ++i) out[i] = out[i] + c * block[i];
  }
  return z;
}

std::vector<uint8_t> to_uint8_images(const Tensor& images) {
  if (images.dtype() != DType::Float32 || images.shape.size() != 4 || images.shape[1] != 3)
    throw InputError("images must be float32 (B, 3, H, W), got " + shape_str(images.shape));
  const int64_t b = images.shape[0], c = 3, h = images.shape[2], w = images.shape[3];
  std::vector<uint8_t> out(static_cast<std::size_t>(b * h * w * c));
  const float* x = images.f32();
  for (int64_t n = 0; n < b; ++n)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx) {
          float v = std::floor(x[((n * c + ch) * h + y) * w + xx] * 127.5f + 128.0f);
          if (std::isnan(v)) v = 0.0f;  // a NaN pixel is black, not undefined behaviour
          out[static_cast<std::size_t>(((n * h + y) * w + xx) * c + ch)] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
        }
  return out;
}

bool all_finite(const Tensor& t) {
  if (t.dtype() != DType::Float32) return true;
  const float* x = t.f32();
  for (int64_t i = 0, n = t.size(); i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

void write_ppm(const std::filesystem::path& path, const uint8_t* hwc, int64_t height, int64_t width) {
  atomic_write(path, [&](std::ostream& out) {
    out << "P6\n" << width << " " << height << "\n255\n";
    out.write(reinterpret_cast<const char*>(hwc), static_cast<std::streamsize>(height * width * 3));
  });
}

}  // namespace tiue
