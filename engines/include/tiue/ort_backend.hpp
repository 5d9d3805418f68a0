// ONNX Runtime backend: one Ort::Session per graph, opened when the backend is made.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tiue/manifest.hpp"
#include "tiue/pipeline.hpp"

namespace tiue {

struct OrtOptions {
  std::string provider = "cpu";  // "cpu" or "cuda" (needs an onnxruntime-gpu library)
  int threads = 0;               // intra-op threads per session, 0..kMaxThreads; 0: ONNX Runtime's default
  int device_id = 0;             // CUDA device
  /// Each graph runs the first of these variants it has: "int8" (the Q/DQ UNet graphs of
  /// tiue-export calibrate), "tiny" (the distilled vae_decoder of tiue-export export --vae tiny).
  std::vector<std::string> variants;
};

/// The most intra-op threads a session may be asked for.
constexpr int kMaxThreads = 1024;

class OrtBackend : public Backend {
 public:
  /// Open a session for each graph in `graphs` (manifest.fused or manifest.unfused). Throws
  /// InputError naming the graph when ONNX Runtime cannot load it (a damaged or truncated file,
  /// as every bad bundle) or for bad options, Error when the provider cannot be used.
  OrtBackend(const Manifest& manifest, const std::vector<std::string>& graphs, OrtOptions options = {});
  ~OrtBackend() override;
  OrtBackend(const OrtBackend&) = delete;
  OrtBackend& operator=(const OrtBackend&) = delete;

  TensorMap run(const std::string& name, const Feed& feed) override;
  std::string name() const override;
  std::vector<std::string> graphs() const override;
  bool concurrent_runs() const override { return true; }  // Ort::Session::Run is thread-safe

  /// The ONNX Runtime library's version string (e.g. "1.31.1").
  static std::string library_version();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tiue
