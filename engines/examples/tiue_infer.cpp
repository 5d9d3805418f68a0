// tiue_infer: run a tiue-export bundle from C++, from prompts and seeds to PNGs.
//
//   tiue_infer BUNDLE --prompt "a red cube" --seed 0 --out cube.png
//   tiue_infer --bundle BUNDLE --ids ids.npy --noise noise.npy --out image.ppm [--latents z0.npy]
//
// Prompts are tokenized by the bundle's tokenizer and z_T drawn from numpy's PCG64 stream, both
// in C++ (tiue::Generator): the images are those of tiue-export infer --backend onnxruntime.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "tiue/error.hpp"
#include "tiue/generator.hpp"
#include "tiue/manifest.hpp"
#include "tiue/noise.hpp"
#include "tiue/ort_backend.hpp"
#include "tiue/png.hpp"
#include "tiue/sampler.hpp"
#include "tiue/tensor.hpp"
#include "tiue/tokenizer.hpp"
#include "tiue/version.hpp"

namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(usage: tiue_infer BUNDLE --prompt TEXT [--seed N] --out FILE.png [options]
       tiue_infer --bundle DIR --ids FILE --noise FILE --out FILE.ppm [options]

Run a one-pass TiUE bundle (tiue-export export): prompts and seeds, or token ids and z_T, to images.

inputs:
  BUNDLE, --bundle DIR  the bundle directory (manifest.json + ONNX graphs + tokenizer)
  --prompt TEXT         a prompt (repeatable; not blank, at most 10000 characters)
  --prompts-file FILE   one prompt per line (UTF-8; surrounding whitespace stripped, blank lines skipped)
  --seed N              seed of each prompt's first image, 0 .. 2^64-1 (default 0); image j uses N+j
  --num-images N        images per prompt (default 1)
  --ids FILE            instead of prompts: token ids, .npy int64 (B, L) or text with one prompt's ids per line
  --noise FILE          with --ids: z_T, .npy float32 (B, C, h, w)
outputs (at least one):
  --out FILE.png        the image(s), PNG with tiue-export infer's text metadata (FILE.ppm: binary PPM);
                        FILE.png for one image, FILE_0.png, FILE_1.png, ... for more
  --latents FILE.npy    z0, float32 (B, C, h, w)
  --images FILE.npy     the VAE output, float32 (B, 3, H, W) in [-1, 1]
  --save-ids FILE.npy   the token ids of the prompts (no graph runs if only --save-* are given)
  --save-noise FILE.npy z_T of the seeds
  --overwrite           replace output files that exist (else refused before any work); files are
                        written to a temporary name and renamed, so an interrupted run leaves the old one
options:
  --unfused             run unet_decoder and Eq. 11 here instead of unet_decoder_fused
  --backend NAME        onnxruntime (default) or tensorrt (when built with TIUE_WITH_TENSORRT)
  --provider NAME       ONNX Runtime provider: cpu (default) or cuda
  --threads N           ONNX Runtime intra-op threads, 0 .. 1024 (default 0: all cores)
  --precision NAME      onnxruntime: int8 runs the calibrated graphs; tensorrt: the engine set (fp16, int8, fp32)
  --vae NAME            full (default) or tiny: the bundle's distilled tiny VAE decoder (tiue-export export --vae tiny)
  --device N            CUDA device (default 0)
  --batch-size N        images per graph call (default 4, as tiue-export infer)
  --verify              check every bundle file's sha256 first
  --version             print versions and exit
)";

struct Args {
  std::string bundle, ids, noise, prompts_file, out, latents, images, save_ids, save_noise;
  std::string backend = "onnxruntime", provider = "cpu", precision, vae = "full";
  std::vector<std::string> prompts;
  uint64_t seed = 0;
  int64_t num_images = 1, threads = 0, device = 0, batch_size = 4;
  bool unfused = false, verify = false, version = false, help = false, overwrite = false;
};

int64_t parse_int(const std::string& flag, const std::string& v, int64_t lo, int64_t hi) {
  int64_t n = 0;
  try {
    std::size_t used = 0;
    n = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
  } catch (const std::exception&) {
    throw tiue::InputError(flag + " needs an integer, got '" + v + "'");
  }
  if (n < lo || n > hi) throw tiue::InputError(flag + " must be " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " + v);
  return n;
}

uint64_t parse_seed(const std::string& v) {
  const bool digits = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
  try {
    if (digits) return std::stoull(v);
  } catch (const std::out_of_range&) {
  }
  throw tiue::InputError("--seed must be an integer from 0 to 18446744073709551615, got '" + v + "'");
}

std::vector<std::pair<std::string, std::string>> outputs(const Args& a);
void writable_dir(const std::string& flag, const std::string& path);

Args parse(int argc, char** argv) {
  Args a;
  const std::map<std::string, std::string*> values = {
      {"--bundle", &a.bundle},     {"--ids", &a.ids},         {"--noise", &a.noise},         {"--out", &a.out},
      {"--latents", &a.latents},   {"--images", &a.images},   {"--backend", &a.backend},     {"--provider", &a.provider},
      {"--precision", &a.precision}, {"--prompts-file", &a.prompts_file}, {"--save-ids", &a.save_ids}, {"--save-noise", &a.save_noise},
      {"--vae", &a.vae}};
  const std::map<std::string, std::pair<int64_t*, std::pair<int64_t, int64_t>>> ints = {
      {"--threads", {&a.threads, {0, tiue::kMaxThreads}}}, {"--device", {&a.device, {0, 1023}}},
      {"--num-images", {&a.num_images, {1, 10000}}},         {"--batch-size", {&a.batch_size, {1, 1024}}}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--unfused") a.unfused = true;
    else if (arg == "--verify") a.verify = true;
    else if (arg == "--overwrite") a.overwrite = true;
    else if (arg == "--version") a.version = true;
    else if (arg == "-h" || arg == "--help") a.help = true;
    else if (arg == "--prompt" || arg == "--seed" || values.count(arg) || ints.count(arg)) {
      if (i + 1 >= argc) throw tiue::InputError(arg + " needs a value");
      const std::string v = argv[++i];
      if (arg == "--prompt") a.prompts.push_back(v);
      else if (arg == "--seed") a.seed = parse_seed(v);
      else if (ints.count(arg)) *ints.at(arg).first = parse_int(arg, v, ints.at(arg).second.first, ints.at(arg).second.second);
      else *values.at(arg) = v;
    } else if (arg.rfind("-", 0) != 0 && a.bundle.empty()) {
      a.bundle = arg;
    } else {
      throw tiue::InputError("unknown option '" + arg + "' (see --help)");
    }
  }
  if (a.help || a.version) return a;
  if (a.bundle.empty()) throw tiue::InputError("missing --bundle (see --help)");
  const bool from_text = !a.prompts.empty() || !a.prompts_file.empty();
  if (from_text && (!a.ids.empty() || !a.noise.empty())) throw tiue::InputError("give prompts or --ids/--noise, not both");
  if (!from_text && (a.ids.empty() || a.noise.empty()))
    throw tiue::InputError(a.ids.empty() && a.noise.empty() ? "no prompt given: use --prompt TEXT or --prompts-file FILE"
                                                            : std::string("missing ") + (a.ids.empty() ? "--ids" : "--noise") + " (see --help)");
  if (!from_text && (!a.save_ids.empty() || !a.save_noise.empty())) throw tiue::InputError("--save-ids and --save-noise need prompts");
  if (a.out.empty() && a.latents.empty() && a.images.empty() && a.save_ids.empty() && a.save_noise.empty())
    throw tiue::InputError("nothing to write: give --out, --latents or --images");
  if (!a.out.empty()) {
    const std::string ext = fs::path(a.out).extension().string();
    if (ext != ".png" && ext != ".ppm") throw tiue::InputError("--out " + a.out + ": name a .png (or .ppm) file");
  }
  for (const auto& [flag, path] : outputs(a)) writable_dir(flag, path);
  return a;
}

/// Every output flag given, with its path.
std::vector<std::pair<std::string, std::string>> outputs(const Args& a) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [flag, path] : {std::make_pair("--out", &a.out), std::make_pair("--latents", &a.latents), std::make_pair("--images", &a.images),
                                   std::make_pair("--save-ids", &a.save_ids), std::make_pair("--save-noise", &a.save_noise)})
    if (!path->empty()) out.emplace_back(flag, *path);
  return out;
}

/// The directory of `path` exists and takes a new file: probed with one (the answer that holds for
/// root, read-only mounts and quotas), as tiue_export.files.writable_dir.
void writable_dir(const std::string& flag, const std::string& path) {
  const fs::path dir = fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  if (!fs::exists(dir)) throw tiue::InputError("cannot write " + path + ": its directory does not exist");
  if (!fs::is_directory(dir)) throw tiue::InputError(flag + " " + path + ": " + dir.string() + " is not a directory");
  std::string probe = (dir / ".tiue-probe-XXXXXX").string();
  errno = 0;
  const int fd = mkstemp(probe.data());
  if (fd < 0) throw tiue::InputError(flag + " " + path + ": cannot write into " + dir.string() + " (" + std::strerror(errno) + ")");
  close(fd);
  unlink(probe.c_str());
}

/// An output that exists is replaced only with --overwrite (as tiue-export infer's --out).
void refuse_existing(const std::string& flag, const fs::path& path, bool overwrite) {
  std::error_code ec;
  if (!overwrite && fs::exists(fs::symlink_status(path, ec)))
    throw tiue::InputError(flag + " " + path.string() + " exists: pass --overwrite to replace it");
}

/// tiue-export infer's prompt file rules: one per line, whitespace around it stripped, blank lines skipped.
std::vector<std::string> read_prompts_file(const std::string& path) {
  if (fs::is_directory(path)) throw tiue::InputError(path + " is a directory, not a prompts file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw tiue::InputError(path + ": cannot open the prompts file (no such file?)");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return tiue::read_prompt_lines(bytes, path);
}

fs::path image_path(const std::string& out, std::size_t i, std::size_t count) {
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
    std::cout << "tiue_infer " << tiue::kVersion << " (manifest schema " << tiue::kSchemaVersion << ", onnxruntime "
              << tiue::OrtBackend::library_version()
#ifdef TIUE_WITH_TENSORRT
              << ", tensorrt"
#endif
              << ")\n";
    return 0;
  }
  // The jobs, as tiue-export infer makes them: each prompt with seeds seed, seed+1, ...
  std::vector<std::string> prompts;
  std::vector<uint64_t> seeds;
  std::vector<std::string> given = a.prompts;
  for (const auto& p : given) tiue::check_prompt(p, "--prompt");  // before any file is read
  if (!a.prompts_file.empty())
    for (auto& p : read_prompts_file(a.prompts_file)) given.push_back(std::move(p));
  if (!a.prompts_file.empty() && given.empty())  // a file of blank lines and no --prompt, as infer
    throw tiue::InputError("no prompt given: use --prompt TEXT or --prompts-file FILE");
  for (const auto& p : given)
    for (int64_t j = 0; j < a.num_images; ++j) {
      if (a.seed > std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(j))
        throw tiue::InputError("--seed " + std::to_string(a.seed) + " + image " + std::to_string(j) + " does not fit in 64 bits");
      prompts.push_back(p);
      seeds.push_back(a.seed + static_cast<uint64_t>(j));
    }

  // Token ids and z_T are read now: their row count names the images --out will write.
  tiue::Tensor ids, z;
  if (prompts.empty()) {
    ids = tiue::read_token_ids(a.ids);
    z = tiue::read_npy(a.noise);
  }
  const std::size_t count = prompts.empty() ? static_cast<std::size_t>(ids.shape.empty() ? 0 : ids.shape[0]) : prompts.size();
  for (const auto& [flag, path] : outputs(a)) {
    if (flag != std::string("--out")) refuse_existing(flag, path, a.overwrite);
    else
      for (std::size_t i = 0; i < count; ++i) refuse_existing(flag, image_path(a.out, i, count), a.overwrite);
  }

  const bool run_graphs = !a.out.empty() || !a.latents.empty() || !a.images.empty();
  tiue::GeneratorOptions options;
  options.backend = a.backend;
  options.precision = a.precision;
  options.vae = a.vae;
  if (a.unfused) options.fused = false;
  options.provider = a.provider;
  options.threads = static_cast<int>(a.threads);
  options.device = static_cast<int>(a.device);
  options.batch_size = static_cast<int>(a.batch_size);
  options.verify = a.verify;
  options.on_warning = [](const std::string& line) { std::cerr << "tiue_infer: warning: " << line << "\n"; };

  if (!run_graphs) {  // only the inputs: the tokenizer and the noise need no graph
    tiue::Manifest m = tiue::Manifest::load(a.bundle);
    if (!a.save_ids.empty()) tiue::write_npy(a.save_ids, tiue::Tokenizer::from_bundle(m)(prompts, options.on_warning));
    if (!a.save_noise.empty()) tiue::write_npy(a.save_noise, tiue::initial_noise(seeds, m.latent));
    std::cout << "tiue_infer: inputs of " << prompts.size() << " image(s) written\n";
    return 0;
  }

  const auto t0 = std::chrono::steady_clock::now();
  const tiue::Generator gen = tiue::Generator::open(a.bundle, options);
  const double load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  tiue::Generation g;
  if (prompts.empty()) {
    g = gen.run(ids, z);
  } else {
    g = gen.generate(prompts, seeds);
  }
  // Everything is computed (and checked finite) before the first file is written, so a failed run
  // leaves none of them behind.
  if (!prompts.empty() && !a.save_ids.empty()) tiue::write_npy(a.save_ids, gen.tokenize(prompts));
  if (!prompts.empty() && !a.save_noise.empty()) tiue::write_npy(a.save_noise, gen.noise(seeds));
  if (!a.latents.empty()) tiue::write_npy(a.latents, g.latents);
  if (!a.images.empty()) tiue::write_npy(a.images, g.float_images);
  if (!a.out.empty()) {
    const bool png = fs::path(a.out).extension() == ".png";
    for (std::size_t i = 0; i < g.images.size(); ++i) {
      const tiue::Image& im = g.images[i];
      const fs::path path = image_path(a.out, i, g.images.size());
      if (!png) {
        tiue::write_ppm(path, im.rgb.data(), im.height, im.width);
      } else if (!prompts.empty()) {
        gen.write_png(path, im);
      } else {  // from ids and z_T: no prompt or seed to record
        tiue::PngText text;
        for (auto& kv : gen.metadata(im))
          if (kv.first != "prompt" && kv.first != "seed") text.push_back(kv);
        tiue::write_png(path, im.rgb.data(), im.height, im.width, text);
      }
    }
  }
  const auto& shape = g.float_images.shape;
  std::cout << "tiue_infer: " << shape[0] << " image(s) " << shape[2] << "x" << shape[3] << " on " << gen.backend_name()
            << (gen.fused() ? "" : " (unfused)") << "; seconds: load " << load;
  for (const auto& [stage, s] : g.seconds) std::cout << ", " << stage << " " << s;
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
  } catch (const std::bad_alloc&) {
    std::cerr << "tiue_infer: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "tiue_infer: internal error: " << tiue::first_line(e.what()) << "\n";
    return 1;
  }
}
