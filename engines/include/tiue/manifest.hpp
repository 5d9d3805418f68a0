// The bundle manifest (manifest.json, schema_version 2): the contract between `tiue-export export`
// and every runtime. Mirrors tiue_export/bundle/manifest.py and
// tiue_export/schemas/manifest.schema.json; Manifest::load makes the checks of
// tiue_export.bundle.io.check_semantics before any graph is loaded.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tiue/tensor.hpp"

namespace tiue {

/// The manifest schema this library reads (older bundles are re-exported, not read).
constexpr int kSchemaVersion = 2;

/// One axis of a declared shape: a fixed size, or the symbol "B" (batch) or "KB" (K*B).
struct Dim {
  int64_t value = 0;   // > 0 when fixed
  std::string symbol;  // "B" or "KB" when symbolic

  bool operator==(const Dim& o) const { return value == o.value && symbol == o.symbol; }
  bool operator!=(const Dim& o) const { return !(*this == o); }
};

/// A declared shape as the manifest writes it: [B, 3, 64, 64].
std::string dims_str(const std::vector<Dim>& shape);

/// One graph input or output, as TensorSpec in specs.py.
struct TensorSpec {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<Dim> shape;
  std::optional<std::pair<int64_t, int64_t>> value_range;  // [low, high) of token ids

  /// The shape for `batch` images of a K-timestep student (B -> batch, KB -> k * batch).
  Shape concrete(int64_t batch, int64_t k) const;
};

/// Another file of a graph with the same inputs and outputs (int8 Q/DQ from tiue-export calibrate).
struct GraphVariant {
  std::string file;       // relative to the bundle
  std::string precision;  // "int8" | "fp16" | "fp32"
  std::string sha256;     // must equal Manifest::files[file]
  std::vector<std::string> external_data;
};

/// One exported graph (an entry of manifest["graphs"]).
struct GraphSpec {
  std::string name;
  std::string file;       // relative to the bundle
  std::string sha256;     // the file's hash; must equal Manifest::files[file]
  std::string precision;  // "fp32" | "fp16" (I/O stays float32 either way)
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<std::string> external_data;
  std::map<std::string, GraphVariant> variants;  // by name ("int8"), if any

  const TensorSpec& input(const std::string& name) const;
  const TensorSpec& output(const std::string& name) const;
  /// The input or output called `name`, or nullptr.
  const TensorSpec* find(const std::string& name) const;
};

/// The DDIM schedule S and E were computed from (manifest["sampler"]["schedule"]).
struct ScheduleSpec {
  int64_t num_train_timesteps = 0;
  std::vector<double> alphas_cumprod;  // indexed by training timestep
};

/// The one-pass sampler: paper Eq. 11, z0 = S z_T + sum_k E[k] eps_k (eps timestep-major).
/// Manifest::load recomputes S and E from the schedule (one_pass_coefficients) and refuses a
/// manifest whose values differ.
struct SamplerSpec {
  int k = 0;
  std::vector<int64_t> timesteps;
  int64_t encoder_timestep = 0;
  std::vector<int64_t> prev_timesteps;  // t - num_train_timesteps / K; < 0: final_alpha_cumprod
  double final_alpha_cumprod = 0.0;
  double S = 0.0;
  std::vector<double> E;
  ScheduleSpec schedule;
};

/// What the Python tokenizer needs to agree with the graphs (the C++ side takes token ids).
struct TokenizerSpec {
  std::string file;  // tokenizer.json, relative to the bundle
  int64_t max_length = 0;
  int64_t pad_id = 0, bos_id = 0, eos_id = 0;
};

/// Batch sizes the engines were built for (TensorRT optimisation profile).
struct BatchProfile {
  int64_t min = 1, opt = 1, max = 1;
};

/// One set of TensorRT plans written by `tiue-export build-trt` (manifest["engines"][precision]).
struct EngineSet {
  std::string precision;           // "fp16" | "int8" | "fp32"
  std::string tensorrt;            // the TensorRT version that built them ("10.x.y...")
  std::string gpu_name;
  std::string compute_capability;  // "8.9": plans do not move between capabilities
  BatchProfile batch_profile;
  bool fused = true;               // unet_decoder_fused (Eq. 11 inside) or unet_decoder
  std::vector<std::string> pipeline;          // graph order
  std::map<std::string, std::string> files;   // graph -> plan file, relative to the bundle
};

/// One way to run the sampler (manifest["runtime"]["chains"][name]): graphs in run order and, for
/// every graph input (and eq11.*, outputs.*), the tensor that feeds it ("graph.output",
/// "inputs.input_ids", "inputs.noise" or "eq11.z0").
struct Chain {
  std::vector<std::string> graphs;
  std::map<std::string, std::string> sources;  // destination -> source
};

/// How deep manifest.json may nest (a manifest nests 7 levels; the parsers' stacks stay bounded).
/// As MAX_JSON_DEPTH in tiue_export/bundle/directory.py.
constexpr int kMaxJsonDepth = 64;

struct Manifest {
  std::filesystem::path dir;
  int schema_version = 0;
  std::string precision;
  std::map<std::string, GraphSpec> graphs;
  std::vector<std::string> fused;    // graph order of the fused one-pass pipeline
  std::vector<std::string> unfused;  // ... with Eq. 11 outside the graphs
  std::map<std::string, Chain> chains;  // "fused", "unfused" and any other; fused/unfused are their graph lists
  SamplerSpec sampler;
  std::array<int64_t, 3> latent{};  // C, h, w
  std::array<int64_t, 2> image{};   // H, W
  std::map<std::string, std::array<int64_t, 3>> features;  // unet_encoder output -> C, h, w
  TokenizerSpec tokenizer;
  BatchProfile batch_profile;
  std::map<std::string, std::string> files;    // relative path -> sha256 hex
  std::map<std::string, EngineSet> engines;     // precision -> TensorRT plans, if any were built

  /// Read and check `dir`/manifest.json. Throws InputError (one line): not a bundle, another
  /// schema version, a missing or mistyped field, or a manifest that contradicts itself (K and the
  /// timestep lists, timesteps outside the schedule, S or E not what the schedule gives, sizes
  /// against the graphs' shapes, a chain that runs a graph the manifest lacks or feeds an input
  /// from nothing, a graph file not listed in `files` with the graph's sha256), and a fused or
  /// unfused chain wired otherwise than this runtime runs it. JSON that is not JSON (NaN,
  /// Infinity) or nests deeper than kMaxJsonDepth is refused as such.
  /// Reads no graph and hashes no file (verify() does).
  static Manifest load(const std::filesystem::path& dir);

  const GraphSpec& graph(const std::string& name) const;
  std::filesystem::path graph_path(const std::string& name) const { return dir / graph(name).file; }
  /// The unified encoder's outputs (mid, skip_0, ...), which both decoders take by name.
  std::vector<std::string> feature_names() const;
  /// z_T's shape for `batch` images.
  Shape latent_shape(int64_t batch) const { return {batch, latent[0], latent[1], latent[2]}; }

  /// Check every listed file's presence and sha256. Throws InputError on a missing or altered
  /// file, Error when built without OpenSSL (sha256 unavailable).
  void verify() const;
};

/// Hex sha256 of a file (OpenSSL); throws Error when built without it.
std::string sha256_file(const std::filesystem::path& path);
/// Whether this build can compute sha256 (was OpenSSL found at configure time).
bool have_sha256();

}  // namespace tiue
