// What an application calls: open a bundle once with its options, then prompts and seeds in,
// RGB images out, the same pixels as `tiue-export infer --backend onnxruntime` (the bundle's
// tokenizer and numpy's PCG64 noise reproduced in C++, batches of the same size).
//
//   tiue::Generator gen = tiue::Generator::open("bundle");           // InputError: a bad bundle
//   tiue::Generation out = gen.generate({"a red cube"}, {0});
//   gen.write_png("cube.png", out.images[0]);                         // with infer's text metadata
//
// Errors: every exception leaving this API is a tiue::Error (InputError: bad input, exit code 2;
// Error: the run failed, exit code 1); anything the standard library throws inside is wrapped.
//
// Thread safety: a Generator may be used from several threads at once. On ONNX Runtime the
// calls run concurrently (sessions are thread-safe, the tokenizer is immutable); on TensorRT,
// whose execution context is shared, they take turns. The warning handler may be called from
// any of those threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tiue/error.hpp"
#include "tiue/manifest.hpp"
#include "tiue/png.hpp"
#include "tiue/tensor.hpp"
#include "tiue/tokenizer.hpp"

namespace tiue {

/// Everything chosen once, when the bundle is opened.
struct GeneratorOptions {
  std::string backend = "onnxruntime";  // or "tensorrt" (a build with -DTIUE_WITH_TENSORRT=ON)
  /// onnxruntime: "" or the bundle's precision (its graphs as exported), "int8" (the Q/DQ
  /// variants of tiue-export calibrate); tensorrt: the engine set ("" = the only one built).
  std::string precision;
  /// Eq. 11 inside unet_decoder_fused (true) or unet_decoder + Eq. 11 in C++ (false). Unset:
  /// fused on ONNX Runtime, whatever the TensorRT engines were built with.
  std::optional<bool> fused;
  /// "full" (the model's VAE decoder) or "tiny": the bundle's distilled tiny vae_decoder
  /// (tiue-export export --vae tiny), as tiue-export infer --vae tiny; ONNX Runtime only.
  std::string vae = "full";
  std::string provider = "cpu";  // ONNX Runtime: cpu or cuda
  int threads = 0;               // ONNX Runtime intra-op threads, 0..kMaxThreads (0: its default)
  int device = 0;                // CUDA device (cuda provider, tensorrt)
  int batch_size = 4;            // images per graph call, as tiue-export infer --batch-size
  bool verify = false;           // check every bundle file's sha256 first (needs OpenSSL)
  WarningHandler on_warning;     // truncated prompts; unset: one line on stderr
};

/// One generated image: H x W x 3 uint8, row-major, and what made it.
struct Image {
  std::string prompt;
  uint64_t seed = 0;
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;
};

struct Generation {
  std::vector<Image> images;
  Tensor latents;       // z0, float32 (N, C, h, w)
  Tensor float_images;  // the VAE output, float32 (N, 3, H, W) in [-1, 1]
  std::map<std::string, double> seconds;  // per stage, summed over batches
};

class Generator {
 public:
  /// Open `bundle` (InputError: not a bundle, a self-contradicting manifest, a missing or
  /// damaged graph, bad options; Error: the engine cannot start).
  static Generator open(const std::filesystem::path& bundle, GeneratorOptions options = {});

  /// Image j from prompts[j] and seeds[j] (z_T = numpy.random.default_rng(seeds[j])'s float32
  /// standard normal). InputError: no prompt, a count mismatch, text that is not UTF-8; Error: a
  /// stage produced NaN or Inf (the message names it).
  Generation generate(const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds) const;
  /// Seeds seed, seed + 1, ... (tiue_export.runtime.Pipeline's default).
  Generation generate(const std::vector<std::string>& prompts, uint64_t seed = 0) const;
  /// From token ids (int64 (B, L)) and z_T (float32 (B, C, h, w)) made elsewhere; the images'
  /// prompt is empty and their seed 0.
  Generation run(const Tensor& input_ids, const Tensor& noise) const;

  /// The token ids the text encoder gets, int64 (B, model_max_length).
  Tensor tokenize(const std::vector<std::string>& prompts) const;
  /// z_T for `seeds`, float32 (B, C, h, w).
  Tensor noise(const std::vector<uint64_t>& seeds) const;

  /// The PNG text tiue-export infer writes: prompt, seed, model, sampler, backend, precision, k,
  /// noise, vae (only when it is not the full decoder), provider, software.
  PngText metadata(const Image& image) const;
  /// write_png with metadata(image).
  void write_png(const std::filesystem::path& path, const Image& image) const;

  const Manifest& manifest() const;
  /// "onnxruntime:CPUExecutionProvider", "tensorrt-fp16", ...
  std::string backend_name() const;
  bool fused() const;

  struct Impl;  // opaque

 private:
  explicit Generator(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace tiue
