// Written against the TensorRT 10 C++ API (NvInfer.h) and the CUDA runtime API.
#include "tiue/trt_backend.hpp"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>

#include "tiue/error.hpp"

namespace tiue {

namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + " failed: " + cudaGetErrorString(status));
}

/// TensorRT's messages at warning and above go to stderr, one line each.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "tensorrt: " << msg << "\n";
  }
};

/// A device allocation that only grows (inputs of a later call may be larger: another batch).
struct DeviceBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;

  void reserve(std::size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
    cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

/// "10.3.0.26" -> "10.3.0"; the library's int version (major*10000 + minor*100 + patch) likewise.
std::string major_minor_patch(const std::string& v) {
  std::stringstream ss(v);
  std::string part, out;
  for (int i = 0; i < 3 && std::getline(ss, part, '.'); ++i) out += (i ? "." : "") + part;
  return out;
}

std::string library_version() {
  const int v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

nvinfer1::DataType trt_dtype(DType d) { return d == DType::Float32 ? nvinfer1::DataType::kFLOAT : nvinfer1::DataType::kINT64; }

std::vector<char> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("TensorRT plan " + path.string() + " is missing: rebuild with tiue-export build-trt");
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

struct Graph {
  GraphSpec spec;
  // Declaration order matters: the context is destroyed before its engine.
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  std::map<std::string, DeviceBuffer> buffers;
};

}  // namespace

struct TrtBackend::Impl {
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;  // must outlive the engines it deserialized
  cudaStream_t stream = nullptr;
  EngineSet set;
  int device = 0;
  std::map<std::string, Graph> graphs;

  ~Impl() {
    graphs.clear();
    if (stream) cudaStreamDestroy(stream);
  }
};

const EngineSet& TrtBackend::select(const Manifest& m, const std::string& precision) {
  const std::string dir = m.dir.string();
  if (m.engines.empty())
    throw InputError("bundle " + dir + " has no TensorRT engines: run tiue-export build-trt " + dir + " --precision fp16");
  std::string have;
  for (const auto& [p, _] : m.engines) have += (have.empty() ? "" : ", ") + p;
  if (precision.empty()) {
    if (m.engines.size() > 1) throw InputError("bundle " + dir + " has " + have + " engines: choose one with --precision");
    return m.engines.begin()->second;
  }
  auto it = m.engines.find(precision);
  if (it == m.engines.end())
    throw InputError("bundle " + dir + " has no " + precision + " engines (it has " + have + "): run tiue-export build-trt " + dir +
                     " --precision " + precision);
  return it->second;
}

TrtBackend::TrtBackend(const Manifest& m, TrtOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->set = select(m, options.precision);
  impl_->device = options.device;
  const EngineSet& set = impl_->set;
  const std::string rebuild = "rebuild with tiue-export build-trt " + m.dir.string() + " --precision " + set.precision;

  // Plans are tied to the TensorRT version and the GPU's compute capability that built them.
  if (major_minor_patch(set.tensorrt) != library_version())
    throw InputError("the " + set.precision + " engines were built with TensorRT " + set.tensorrt + ", this is TensorRT " +
                     library_version() + ": " + rebuild);
  cuda_check(cudaSetDevice(options.device), "cudaSetDevice");
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties");
  const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  if (cc != set.compute_capability)
    throw InputError("the " + set.precision + " engines were built for " + set.gpu_name + " (compute capability " + set.compute_capability +
                     "), this GPU is " + prop.name + " (" + cc + "): " + rebuild);

  impl_->runtime.reset(nvinfer1::createInferRuntime(impl_->logger));
  if (!impl_->runtime) throw Error("TensorRT: createInferRuntime failed");
  cuda_check(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");

  for (const auto& name : set.pipeline) {
    Graph g;
    g.spec = m.graph(name);
    const auto plan = read_file(m.dir / set.files.at(name));
    g.engine.reset(impl_->runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!g.engine) throw Error("TensorRT cannot deserialize the " + name + " plan: " + rebuild);
    const int n_io = g.engine->getNbIOTensors();
    if (n_io != static_cast<int>(g.spec.inputs.size() + g.spec.outputs.size()))
      throw InputError("the " + name + " engine has " + std::to_string(n_io) + " I/O tensors, the manifest says " +
                       std::to_string(g.spec.inputs.size() + g.spec.outputs.size()) + ": " + rebuild);
    for (const auto* list : {&g.spec.inputs, &g.spec.outputs})
      for (const auto& t : *list)
        if (g.engine->getTensorDataType(t.name.c_str()) != trt_dtype(t.dtype))
          throw InputError("the " + name + " engine's " + t.name + " is not " + dtype_name(t.dtype) + ": " + rebuild);
    g.context.reset(g.engine->createExecutionContext());
    if (!g.context) throw Error("TensorRT: cannot create an execution context for " + name + " (out of device memory?)");
    impl_->graphs.emplace(name, std::move(g));
  }
}

TrtBackend::~TrtBackend() = default;

std::string TrtBackend::name() const { return "tensorrt-" + impl_->set.precision; }

const EngineSet& TrtBackend::engines() const { return impl_->set; }

std::vector<std::string> TrtBackend::graphs() const { return impl_->set.pipeline; }

TensorMap TrtBackend::run(const std::string& name, const Feed& feed) {
  auto it = impl_->graphs.find(name);
  if (it == impl_->graphs.end()) throw Error("graph " + name + " has no engine in the " + impl_->set.precision + " set");
  Graph& g = it->second;
  nvinfer1::IExecutionContext* ctx = g.context.get();
  cudaStream_t stream = impl_->stream;
  const BatchProfile& profile = impl_->set.batch_profile;

  for (const auto& t : g.spec.inputs) {
    auto f = feed.find(t.name);
    if (f == feed.end()) throw Error("graph " + name + ": no value for input '" + t.name + "'");
    const Tensor& x = f->second.get();
    if (x.dtype() != t.dtype)
      throw InputError("graph " + name + ": input " + t.name + " is " + dtype_name(x.dtype()) + ", the bundle says " + dtype_name(t.dtype));
    if (!t.shape.empty() && t.shape[0].symbol == "B" && (x.shape[0] < profile.min || x.shape[0] > profile.max))
      throw InputError("batch " + std::to_string(x.shape[0]) + " is outside the engines' profile " + std::to_string(profile.min) + ".." +
                       std::to_string(profile.max) + ": rebuild with tiue-export build-trt --batch");
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(x.shape.size());
    for (std::size_t i = 0; i < x.shape.size(); ++i) dims.d[i] = x.shape[i];
    if (!ctx->setInputShape(t.name.c_str(), dims))
      throw InputError("graph " + name + ": input " + t.name + " shape " + shape_str(x.shape) + " does not fit the engine's profile");
    DeviceBuffer& buf = g.buffers[t.name];
    buf.reserve(x.nbytes());
    cuda_check(cudaMemcpyAsync(buf.ptr, x.raw(), x.nbytes(), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (to device)");
    ctx->setTensorAddress(t.name.c_str(), buf.ptr);
  }

  TensorMap out;
  for (const auto& t : g.spec.outputs) {
    const nvinfer1::Dims d = ctx->getTensorShape(t.name.c_str());  // resolved from the input shapes
    Shape shape;
    for (int32_t i = 0; i < d.nbDims; ++i) {
      if (d.d[i] < 0) throw Error("graph " + name + ": TensorRT cannot resolve the shape of output " + t.name);
      shape.push_back(d.d[i]);
    }
    Tensor host = Tensor::zeros(t.dtype, shape);
    DeviceBuffer& buf = g.buffers[t.name];
    buf.reserve(host.nbytes());
    ctx->setTensorAddress(t.name.c_str(), buf.ptr);
    out.emplace(t.name, std::move(host));
  }

  if (!ctx->enqueueV3(stream)) throw Error("TensorRT failed to enqueue " + name);
  for (auto& [tname, host] : out)
    cuda_check(cudaMemcpyAsync(host.raw(), g.buffers.at(tname).ptr, host.nbytes(), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync (to host)");
  cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return out;
}

}  // namespace tiue
