#include "tiue/generator.hpp"

#include <iostream>
#include <limits>
#include <new>

#include "tiue/error.hpp"
#include "tiue/noise.hpp"
#include "tiue/ort_backend.hpp"
#include "tiue/pipeline.hpp"
#include "tiue/sampler.hpp"
#include "tiue/version.hpp"
#ifdef TIUE_WITH_TENSORRT
#include "tiue/trt_backend.hpp"
#endif

namespace tiue {

namespace {

/// Run `fn`; anything but a tiue::Error leaves as one (the API's promise).
template <typename Fn>
auto guarded(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Error("out of memory");
  } catch (const std::exception& e) {
    throw Error(std::string("internal error: ") + first_line(e.what()));
  }
}

/// Rows [begin, end) of a tensor along its first axis.
Tensor rows(const Tensor& t, int64_t begin, int64_t end) {
  const int64_t per = t.shape.empty() || t.shape[0] == 0 ? 0 : t.size() / t.shape[0];
  Shape shape = t.shape;
  shape[0] = end - begin;
  if (t.dtype() == DType::Float32) return Tensor::of(shape, std::vector<float>(t.f32() + begin * per, t.f32() + end * per));
  return Tensor::of(shape, std::vector<int64_t>(t.i64() + begin * per, t.i64() + end * per));
}

/// Append `part`'s rows to `all` (float32).
void append_rows(Tensor& all, const Tensor& part) {
  if (all.shape.empty()) {
    all = part;
    return;
  }
  auto& dst = std::get<std::vector<float>>(all.data);
  const float* src = part.f32();
  dst.insert(dst.end(), src, src + part.size());
  all.shape[0] += part.shape[0];
}

}  // namespace

struct Generator::Impl {
  std::filesystem::path bundle;
  GeneratorOptions options;
  std::string precision;  // what the PNG metadata says
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Pipeline> pipeline;
};

Generator Generator::open(const std::filesystem::path& bundle, GeneratorOptions options) {
  return guarded([&] {
    if (options.batch_size < 1) throw InputError("batch_size must be >= 1, got " + std::to_string(options.batch_size));
    auto impl = std::make_shared<Impl>();
    impl->bundle = bundle;
    Manifest m = Manifest::load(bundle);
    if (options.verify) m.verify();
    impl->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_bundle(m));
    if (options.vae != "full" && options.vae != "tiny") throw InputError("unknown vae '" + options.vae + "': use full or tiny");
    // As Bundle.with_variant: a variant some graph has, or one line naming how to get it.
    auto require_variant = [&](const std::string& variant, const std::string& fix) {
      for (const auto& [name, g] : m.graphs)
        if (g.variants.count(variant)) return;
      throw InputError("bundle " + bundle.string() + " has no " + variant + " graphs (it is " + m.precision + "): " + fix);
    };
    if (options.vae == "tiny") require_variant("tiny", "re-export it with --vae tiny (a distill-vae decoder)");
    std::unique_ptr<Backend> backend;
    if (options.backend == "onnxruntime") {
      const std::string& p = options.precision;
      if (!p.empty() && p != "int8" && p != m.precision)
        throw InputError("precision '" + p + "' on onnxruntime: this bundle's graphs are " + m.precision + " (int8 after tiue-export calibrate)");
      if (p == "int8") require_variant("int8", "run tiue-export calibrate " + bundle.string());
      impl->precision = p.empty() ? m.precision : p;
      const bool fused = options.fused.value_or(true);
      std::vector<std::string> variants;  // the int8 UNet graphs and the tiny VAE decoder compose
      if (p == "int8") variants.push_back("int8");
      if (options.vae == "tiny") variants.push_back("tiny");
      backend = std::make_unique<OrtBackend>(m, fused ? m.fused : m.unfused, OrtOptions{options.provider, options.threads, options.device, variants});
    } else if (options.backend == "tensorrt") {
#ifdef TIUE_WITH_TENSORRT
      if (options.vae != "full") throw InputError("vae " + options.vae + " runs on onnxruntime: TensorRT's engines are built from the graphs as exported");
      auto trt = std::make_unique<TrtBackend>(m, TrtOptions{options.precision, options.device});
      if (options.fused && *options.fused != trt->engines().fused)
        throw InputError("the " + trt->engines().precision + " engines were built " + (trt->engines().fused ? "with" : "without") +
                         " the fused decoder: open them with fused " + (trt->engines().fused ? "on" : "off"));
      impl->precision = trt->engines().precision;
      backend = std::move(trt);
#else
      throw InputError("this tiue_engines was built without TensorRT: rebuild with -DTIUE_WITH_TENSORRT=ON");
#endif
    } else {
      throw InputError("unknown backend '" + options.backend + "': use onnxruntime or tensorrt");
    }
    if (!options.on_warning) options.on_warning = [](const std::string& line) { std::cerr << "tiue: warning: " << line << "\n"; };
    impl->options = std::move(options);
    impl->pipeline = std::make_unique<Pipeline>(std::move(m), std::move(backend));
    return Generator(std::move(impl));
  });
}

Tensor Generator::tokenize(const std::vector<std::string>& prompts) const {
  return guarded([&] { return (*impl_->tokenizer)(prompts, impl_->options.on_warning); });
}

Tensor Generator::noise(const std::vector<uint64_t>& seeds) const {
  return guarded([&] { return initial_noise(seeds, impl_->pipeline->manifest().latent); });
}

Generation Generator::generate(const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds) const {
  return guarded([&] {
    if (prompts.empty()) throw InputError("no prompt given");
    if (prompts.size() != seeds.size())
      throw InputError(std::to_string(prompts.size()) + " prompts but " + std::to_string(seeds.size()) + " seeds");
    Generation out = run(tokenize(prompts), noise(seeds));
    for (std::size_t i = 0; i < out.images.size(); ++i) {
      out.images[i].prompt = prompts[i];
      out.images[i].seed = seeds[i];
    }
    return out;
  });
}

Generation Generator::run(const Tensor& ids, const Tensor& z) const {
  return guarded([&] {
    impl_->pipeline->check_inputs(ids, z);  // the whole call, before any batch runs
    Generation out;
    const int64_t n = ids.shape[0];
    for (int64_t start = 0; start < n; start += impl_->options.batch_size) {
      const int64_t end = std::min<int64_t>(n, start + impl_->options.batch_size);
      Result r = impl_->pipeline->run(rows(ids, start, end), rows(z, start, end));
      const std::vector<uint8_t> pixels = to_uint8_images(r.images);
      const int64_t h = r.images.shape[2], w = r.images.shape[3];
      for (int64_t i = start; i < end; ++i) {
        const auto* first = pixels.data() + (i - start) * h * w * 3;
        out.images.push_back(Image{"", 0, h, w, std::vector<uint8_t>(first, first + h * w * 3)});
      }
      append_rows(out.latents, r.latents);
      append_rows(out.float_images, r.images);
      for (const auto& [stage, s] : r.seconds) out.seconds[stage] += s;
    }
    return out;
  });
}

Generation Generator::generate(const std::vector<std::string>& prompts, uint64_t seed) const {
  return guarded([&] {
    if (prompts.size() > 1 && seed > std::numeric_limits<uint64_t>::max() - (prompts.size() - 1))
      throw InputError("seed " + std::to_string(seed) + " + " + std::to_string(prompts.size() - 1) + " does not fit in 64 bits");
    std::vector<uint64_t> seeds(prompts.size());
    for (std::size_t i = 0; i < seeds.size(); ++i) seeds[i] = seed + i;
    return generate(prompts, seeds);
  });
}

PngText Generator::metadata(const Image& image) const {
  const std::string name = backend_name();
  const auto colon = name.find(':');
  PngText text = {{"prompt", image.prompt},
                  {"seed", std::to_string(image.seed)},
                  {"model", impl_->bundle.string()},
                  {"sampler", "one-pass"},
                  {"backend", impl_->options.backend},
                  {"precision", impl_->precision},
                  {"k", std::to_string(manifest().sampler.k)},
                  {"noise", "numpy"}};
  if (impl_->options.vae != "full") text.emplace_back("vae", impl_->options.vae);  // as infer: full-VAE PNGs stay as they were
  text.emplace_back("provider", colon == std::string::npos ? name : name.substr(colon + 1));
  text.emplace_back("software", std::string("tiue_engines ") + kVersion);
  return text;
}

void Generator::write_png(const std::filesystem::path& path, const Image& image) const {
  guarded([&] {
    if (image.rgb.size() != static_cast<std::size_t>(image.height * image.width * 3))
      throw InputError("image holds " + std::to_string(image.rgb.size()) + " bytes, not " + std::to_string(image.height) + "x" +
                       std::to_string(image.width) + "x3");
    tiue::write_png(path, image.rgb.data(), image.height, image.width, metadata(image));
    return 0;
  });
}

const Manifest& Generator::manifest() const { return impl_->pipeline->manifest(); }
std::string Generator::backend_name() const { return impl_->pipeline->backend().name(); }
bool Generator::fused() const { return impl_->pipeline->fused(); }

}  // namespace tiue
