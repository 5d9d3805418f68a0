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
  int threads = 0;               // intra-op threads per session; 0: ONNX Runtime's default
  int device_id = 0;             // CUDA device
};

class OrtBackend : public Backend {
 public:
  /// Open a session for each graph in `graphs` (e.g. manifest.fused). Throws Error naming the
  /// graph when ONNX Runtime cannot load it.
  OrtBackend(const Manifest& manifest, const std::vector<std::string>& graphs, OrtOptions options = {});
  ~OrtBackend() override;
  OrtBackend(const OrtBackend&) = delete;
  OrtBackend& operator=(const OrtBackend&) = delete;

  TensorMap run(const std::string& name, const Feed& feed) override;
  std::string name() const override;

  /// The ONNX Runtime library's version string (e.g. "1.31.1").
  static std::string library_version();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tiue
