// tiue_infer: run a tiue-export bundle from C++.
//
//   tiue_infer --bundle BUNDLE --ids ids.npy --noise noise.npy --out image.ppm [--latents z0.npy]
//
// Token ids come from the bundle's tokenizer in Python (examples/python_embed.py --save-inputs),
// and so does z_T (numpy PCG64 noise), so that C++ and Python start from the same arrays.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "tiue/error.hpp"
#include "tiue/manifest.hpp"
#include "tiue/ort_backend.hpp"
#include "tiue/pipeline.hpp"
#include "tiue/sampler.hpp"
#include "tiue/tensor.hpp"
#ifdef TIUE_WITH_TENSORRT
#include "tiue/trt_backend.hpp"
#endif

namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(usage: tiue_infer --bundle DIR --ids FILE --noise FILE [options]

Run a one-pass TiUE bundle (tiue-export export) on token ids and z_T.

required:
  --bundle DIR        the bundle directory (manifest.json + ONNX graphs)
  --ids FILE          token ids: .npy int64 (B, L), or text with one prompt's ids per line
  --noise FILE        z_T: .npy float32 (B, C, h, w)
outputs (at least one):
  --out FILE.ppm      the image(s): FILE.ppm for one prompt, FILE_0.ppm, FILE_1.ppm, ... for more
  --latents FILE.npy  z0, float32 (B, C, h, w)
  --images FILE.npy   the VAE output, float32 (B, 3, H, W) in [-1, 1]
options:
  --unfused           run unet_decoder and Eq. 11 here instead of unet_decoder_fused
  --backend NAME      onnxruntime (default) or tensorrt (when built with TIUE_WITH_TENSORRT)
  --provider NAME     ONNX Runtime provider: cpu (default) or cuda
  --threads N         ONNX Runtime intra-op threads (default: all cores)
  --precision NAME    TensorRT engine set to run (fp16, int8, fp32; default: the only one built)
  --device N          CUDA device for --backend tensorrt (default 0)
  --verify            check every bundle file's sha256 first
  --version           print versions and exit
)";

struct Args {
  std::string bundle, ids, noise, out, latents, images, backend = "onnxruntime", provider = "cpu", precision;
  int threads = 0, device = 0;
  bool unfused = false, verify = false, version = false, help = false;
};

Args parse(int argc, char** argv) {
  Args a;
  const std::map<std::string, std::string*> values = {
      {"--bundle", &a.bundle},   {"--ids", &a.ids},         {"--noise", &a.noise},       {"--out", &a.out},
      {"--latents", &a.latents}, {"--images", &a.images},   {"--backend", &a.backend},   {"--provider", &a.provider},
      {"--precision", &a.precision}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--unfused") a.unfused = true;
    else if (arg == "--verify") a.verify = true;
    else if (arg == "--version") a.version = true;
    else if (arg == "-h" || arg == "--help") a.help = true;
    else if (arg == "--threads" || arg == "--device" || values.count(arg)) {
      if (i + 1 >= argc) throw tiue::InputError(arg + " needs a value");
      const std::string v = argv[++i];
      if (arg == "--threads" || arg == "--device") {
        int n = 0;
        try {
          std::size_t used = 0;
          n = std::stoi(v, &used);
          if (used != v.size()) throw std::invalid_argument(v);
        } catch (const std::exception&) {
          throw tiue::InputError(arg + " needs an integer, got '" + v + "'");
        }
        if (n < 0) throw tiue::InputError(arg + " must be >= 0");
        (arg == "--threads" ? a.threads : a.device) = n;
      } else {
        *values.at(arg) = v;
      }
    } else {
      throw tiue::InputError("unknown option '" + arg + "' (see --help)");
    }
  }
  if (a.help || a.version) return a;
  for (const auto& [flag, value] : {std::pair{"--bundle", a.bundle}, {"--ids", a.ids}, {"--noise", a.noise}})
    if (value.empty()) throw tiue::InputError(std::string("missing ") + flag + " (see --help)");
  if (a.out.empty() && a.latents.empty() && a.images.empty())
    throw tiue::InputError("nothing to write: give --out, --latents or --images");
  for (const auto& path : {a.out, a.latents, a.images})
    if (!path.empty() && !fs::path(path).parent_path().empty() && !fs::is_directory(fs::path(path).parent_path()))
      throw tiue::InputError("cannot write " + path + ": its directory does not exist");
  return a;
}

/// The backend, the graphs it runs and whether its decoder is the fused one.
std::unique_ptr<tiue::Backend> make_backend(const Args& a, const tiue::Manifest& m, bool& fused) {
  if (a.backend == "onnxruntime") {
    if (!a.precision.empty()) throw tiue::InputError("--precision chooses TensorRT engines: use it with --backend tensorrt");
    fused = !a.unfused;
    return std::make_unique<tiue::OrtBackend>(m, fused ? m.fused : m.unfused, tiue::OrtOptions{a.provider, a.threads});
  }
#ifdef TIUE_WITH_TENSORRT
  if (a.backend == "tensorrt") {
    auto trt = std::make_unique<tiue::TrtBackend>(m, tiue::TrtOptions{a.precision, a.device});
    fused = trt->engines().fused;
    if (a.unfused && fused)
      throw tiue::InputError("the " + trt->engines().precision + " engines were built with the fused decoder: drop --unfused");
    return trt;
  }
#endif
  if (a.backend == "tensorrt") throw tiue::InputError("this tiue_infer was built without TensorRT: rebuild with -DTIUE_WITH_TENSORRT=ON");
  throw tiue::InputError("unknown backend '" + a.backend + "': use onnxruntime or tensorrt");
}

fs::path image_path(const std::string& out, int64_t i, int64_t count) {
  if (count == 1) return out;
  fs::path p(out);
  return p.parent_path() / (p.stem().string() + "_" + std::to_string(i) + p.extension().string());
}

int run(int argc, char** argv) {
  const Args a = parse(argc, argv);
  if (a.help) {
    std::cout << kUsage;
    return 0;
  }
  if (a.version) {
    std::cout << "tiue_infer 0.1.0 (manifest schema " << tiue::kSchemaVersion << ", onnxruntime " << tiue::OrtBackend::library_version()
#ifdef TIUE_WITH_TENSORRT
              << ", tensorrt"
#endif
              << ")\n";
    return 0;
  }
  tiue::Manifest manifest = tiue::Manifest::load(a.bundle);
  if (a.verify) manifest.verify();
  const tiue::Tensor ids = tiue::read_token_ids(a.ids);
  const tiue::Tensor noise = tiue::read_npy(a.noise);

  bool fused = true;
  const auto t0 = std::chrono::steady_clock::now();
  auto backend = make_backend(a, manifest, fused);
  const double load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  tiue::Pipeline pipe(manifest, std::move(backend));
  pipe.check_inputs(ids, noise);  // before the run, so a bad input costs nothing
  tiue::Result r = pipe.run(ids, noise, fused);

  if (!a.latents.empty()) tiue::write_npy(a.latents, r.latents);
  if (!a.images.empty()) tiue::write_npy(a.images, r.images);
  if (!a.out.empty()) {
    const auto pixels = tiue::to_uint8_images(r.images);
    const int64_t b = r.images.shape[0], h = r.images.shape[2], w = r.images.shape[3];
    for (int64_t i = 0; i < b; ++i) tiue::write_ppm(image_path(a.out, i, b), pixels.data() + i * h * w * 3, h, w);
  }
  std::cout << "tiue_infer: " << r.images.shape[0] << " image(s) " << r.images.shape[2] << "x" << r.images.shape[3] << " on "
            << pipe.backend().name() << (fused ? "" : " (unfused)") << "; seconds: load " << load;
  for (const auto& [stage, s] : r.seconds) std::cout << ", " << stage << " " << s;
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const tiue::Error& e) {
    std::cerr << "tiue_infer: error: " << tiue::first_line(e.what()) << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "tiue_infer: internal error: " << tiue::first_line(e.what()) << "\n";
    return 1;
  }
}
