#include "tiue/ort_backend.hpp"

// Initialise the API ourselves: a library older than these headers answers GetApi with nullptr,
// which the static initialiser would dereference.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <map>

#include "tiue/error.hpp"

namespace tiue {

namespace {

/// Bind the C++ API to the loaded library once; throws Error when the library is too old.
void init_api() {
  static const OrtApi* api = [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* a = base->GetApi(ORT_API_VERSION);
    if (a == nullptr)
      throw Error(std::string("libonnxruntime ") + base->GetVersionString() + " is older than the headers this was built with (C API " +
                  std::to_string(ORT_API_VERSION) + "): use ONNX Runtime >= 1." + std::to_string(ORT_API_VERSION));
    Ort::InitApi(a);
    return a;
  }();
  (void)api;
}

}  // namespace

struct OrtBackend::Impl {
  std::map<std::string, GraphSpec> specs;  // copied: the backend does not depend on the manifest's lifetime
  OrtOptions options;
  Ort::Env env{ORT_LOGGING_LEVEL_ERROR, "tiue"};
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::map<std::string, Ort::Session> sessions;
  std::vector<std::string> order;
};

namespace {

Ort::SessionOptions session_options(const OrtOptions& o) {
  Ort::SessionOptions so;
  so.SetLogSeverityLevel(3);  // errors only: warnings about unused initializers are noise here
  if (o.threads > 0) so.SetIntraOpNumThreads(o.threads);
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  if (o.provider == "cuda") {
    Ort::CUDAProviderOptions cuda;
    cuda.Update({{"device_id", std::to_string(o.device_id)}});
    so.AppendExecutionProvider_CUDA_V2(*cuda);
  } else if (o.provider != "cpu") {
    throw InputError("unknown ONNX Runtime provider '" + o.provider + "': use cpu or cuda");
  }
  return so;
}

}  // namespace

OrtBackend::OrtBackend(const Manifest& manifest, const std::vector<std::string>& graphs, OrtOptions options)
    : impl_((init_api(), std::make_unique<Impl>())) {
  if (options.threads < 0 || options.threads > kMaxThreads)
    throw InputError("threads must be 0 (ONNX Runtime's default) to " + std::to_string(kMaxThreads) + ", got " + std::to_string(options.threads));
  for (const auto& v : options.variants)
    if (v != "int8" && v != "tiny")
      throw InputError("unknown graph variant '" + v + "': the bundles' variants are int8 (tiue-export calibrate) and tiny (export --vae tiny)");
  impl_->options = options;
  Ort::SessionOptions so;
  try {
    so = session_options(options);
  } catch (const Ort::Exception& e) {
    throw Error("ONNX Runtime cannot use provider '" + options.provider + "': " + first_line(e.what()));
  }
  for (const auto& g : graphs) {
    const GraphSpec& spec = manifest.graph(g);
    std::string file = spec.file;
    for (const auto& v : options.variants) {
      auto variant = spec.variants.find(v);
      if (variant != spec.variants.end()) {
        file = variant->second.file;
        break;
      }
    }
    const auto path = manifest.dir / file;
    if (!std::filesystem::is_regular_file(path)) throw InputError("bundle " + manifest.dir.string() + ": " + file + " is missing: re-export the bundle");
    try {
      impl_->sessions.emplace(g, Ort::Session(impl_->env, path.c_str(), so));
      impl_->specs.emplace(g, spec);
      impl_->order.push_back(g);
    } catch (const Ort::Exception& e) {
      throw InputError("ONNX Runtime cannot load " + file + " (damaged or truncated? --verify checks the bundle's files): " + first_line(e.what()));
    }
  }
}

OrtBackend::~OrtBackend() = default;

std::string OrtBackend::name() const {
  return std::string("onnxruntime:") + (impl_->options.provider == "cuda" ? "CUDAExecutionProvider" : "CPUExecutionProvider");
}

std::vector<std::string> OrtBackend::graphs() const { return impl_->order; }

std::string OrtBackend::library_version() { return OrtGetApiBase()->GetVersionString(); }

TensorMap OrtBackend::run(const std::string& name, const Feed& feed) {
  auto it = impl_->sessions.find(name);
  if (it == impl_->sessions.end()) throw Error("graph " + name + " was not opened by this backend");
  const GraphSpec& spec = impl_->specs.at(name);

  std::vector<const char*> in_names, out_names;
  std::vector<Ort::Value> in_values;
  for (const auto& t : spec.inputs) {
    auto f = feed.find(t.name);
    if (f == feed.end()) throw Error("graph " + name + ": no value for input '" + t.name + "'");
    const Tensor& x = f->second.get();
    if (x.dtype() != t.dtype)
      throw InputError("graph " + name + ": input " + t.name + " is " + dtype_name(x.dtype()) + ", the bundle says " + dtype_name(t.dtype));
    in_names.push_back(t.name.c_str());
    // ORT reads inputs in place; its API takes a non-const pointer but never writes an input.
    in_values.push_back(Ort::Value::CreateTensor(impl_->cpu, const_cast<void*>(x.raw()), x.nbytes(), x.shape.data(), x.shape.size(),
                                                 x.dtype() == DType::Float32 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                                             : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64));
  }
  for (const auto& t : spec.outputs) out_names.push_back(t.name.c_str());

  std::vector<Ort::Value> outs;
  try {
    outs = it->second.Run(Ort::RunOptions{nullptr}, in_names.data(), in_values.data(), in_values.size(), out_names.data(), out_names.size());
  } catch (const Ort::Exception& e) {
    throw Error("ONNX Runtime failed running " + name + ": " + first_line(e.what()));
  }

  TensorMap result;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    auto info = outs[i].GetTensorTypeAndShapeInfo();
    Shape shape = info.GetShape();
    const auto n = static_cast<std::size_t>(info.GetElementCount());
    if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      const float* p = outs[i].GetTensorData<float>();
      result.emplace(out_names[i], Tensor{shape, std::vector<float>(p, p + n)});
    } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      const int64_t* p = outs[i].GetTensorData<int64_t>();
      result.emplace(out_names[i], Tensor{shape, std::vector<int64_t>(p, p + n)});
    } else {
      throw Error("graph " + name + ": output " + out_names[i] + " has an element type this runtime does not read");
    }
  }
  return result;
}

}  // namespace tiue
