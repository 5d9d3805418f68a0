// TensorRT 10 backend: the plans `tiue-export build-trt` wrote into the bundle, deserialized
// once, run with setInputShape + setTensorAddress + enqueueV3 on one CUDA stream.
//
// Compiled only with -DTIUE_WITH_TENSORRT=ON (TensorRT and the CUDA toolkit found); written
// against the TensorRT 10 C++ API and not built on the project's CPU machines.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tiue/manifest.hpp"
#include "tiue/pipeline.hpp"

namespace tiue {

struct TrtOptions {
  std::string precision;  // which engine set ("fp16", "int8", "fp32"); empty: the only one built
  int device = 0;         // CUDA device
};

class TrtBackend : public Backend {
 public:
  /// Deserialize the chosen engine set's plans. Throws InputError: no such set, plans built by
  /// another TensorRT version or for another compute capability ("rebuild with ..."); Error:
  /// CUDA or TensorRT failures.
  TrtBackend(const Manifest& manifest, TrtOptions options = {});
  ~TrtBackend() override;
  TrtBackend(const TrtBackend&) = delete;
  TrtBackend& operator=(const TrtBackend&) = delete;

  /// Copies the feed to the device, enqueues the engine and copies its outputs back, all on the
  /// backend's stream; returns after the stream synchronised.
  TensorMap run(const std::string& name, const Feed& feed) override;
  std::string name() const override;
  /// The engine set's graph order (its fused or unfused chain, fixed when it was built).
  std::vector<std::string> graphs() const override;

  /// The engine set in use: its graph order and whether its decoder is the fused one.
  const EngineSet& engines() const;

  /// The engine set `precision` of `manifest` (the only one when `precision` is empty), with
  /// the same messages as tiue_export.trt.runtime.engine_entry.
  static const EngineSet& select(const Manifest& manifest, const std::string& precision);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tiue
