// The one-pass TiUE pipeline over any backend: token ids + z_T -> text encoder -> unified encoder
// -> K-batched decoder (Eq. 11 inside unet_decoder_fused, or in C++ after unet_decoder) -> VAE.
// The same stages as tiue_export.runtime.Pipeline; a backend only runs one graph on a feed.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tiue/manifest.hpp"
#include "tiue/tensor.hpp"

namespace tiue {

/// A graph's inputs by name, borrowed from the caller (no copies of multi-MB features).
using Feed = std::map<std::string, std::reference_wrapper<const Tensor>>;

/// Runs the bundle's graphs by name (ONNX Runtime, TensorRT, ...).
class Backend {
 public:
  virtual ~Backend() = default;
  /// Run graph `name` on `feed` (its inputs by name; extra entries are ignored) and return every
  /// output by name. Throws Error when the engine fails.
  virtual TensorMap run(const std::string& name, const Feed& feed) = 0;
  /// "onnxruntime:CPUExecutionProvider", "tensorrt", ...
  virtual std::string name() const = 0;
  /// The graphs this backend opened, in run order: the manifest's fused or unfused chain. Which
  /// one is decided once, when the backend is made.
  virtual std::vector<std::string> graphs() const = 0;
  /// Whether run() may be called from several threads at once (ONNX Runtime sessions: yes; a
  /// TensorRT execution context: no, Pipeline serialises those calls).
  virtual bool concurrent_runs() const { return false; }
};

/// What a call produced: z0, the decoded images (float32 NCHW in [-1, 1]), the text
/// embeddings, and seconds per stage.
struct Result {
  Tensor text_embeddings;
  Tensor latents;  // z0
  Tensor images;   // float32 (B, 3, H, W)
  std::map<std::string, double> seconds;
};

/// Thread safety: run() may be called from several threads at once; on a backend without
/// concurrent runs the calls take turns. The stages below are not guarded.
class Pipeline {
 public:
  /// Throws InputError when the backend did not open a whole chain (fused: text_encoder,
  /// unet_encoder, unet_decoder_fused, vae_decoder; unfused: unet_decoder instead).
  Pipeline(Manifest manifest, std::unique_ptr<Backend> backend);

  /// One image per row of `input_ids` (int64 (B, L), from the bundle's tokenizer) from z_T
  /// `noise` (float32 (B, C, h, w)), on the backend's chain. Throws InputError for ids or noise
  /// that do not fit the bundle (the message says what it needs), Error when a stage's output is
  /// not finite (the message names the first such stage).
  Result run(const Tensor& input_ids, const Tensor& noise);

  /// Whether Eq. 11 runs inside unet_decoder_fused (the backend opened the fused chain).
  bool fused() const { return fused_; }

  // The stages, for callers that want their own chain.
  Tensor encode_text(const Tensor& input_ids);
  TensorMap encode(const Tensor& noise, const Tensor& text);
  Tensor decode(const TensorMap& features, const Tensor& text);  // eps, (K*B, C, h, w)
  Tensor decode_fused(const TensorMap& features, const Tensor& text, const Tensor& noise);  // z0
  Tensor decode_latents(const Tensor& z0);  // images, float32 (B, 3, H, W)

  const Manifest& manifest() const { return manifest_; }
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }

  /// Throws InputError unless ids and noise fit the bundle (shapes, dtypes, id range, batch).
  void check_inputs(const Tensor& input_ids, const Tensor& noise) const;

 private:
  Tensor single_output(const std::string& graph, const std::string& output, const Feed& feed);

  Manifest manifest_;
  std::unique_ptr<Backend> backend_;
  bool fused_ = true;
  std::mutex serial_;  // taken by run() when the backend has no concurrent runs
};

}  // namespace tiue
