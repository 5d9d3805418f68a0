#include "tiue/pipeline.hpp"

#include <algorithm>
#include <chrono>

#include "tiue/error.hpp"
#include "tiue/sampler.hpp"

namespace tiue {

Pipeline::Pipeline(Manifest manifest, std::unique_ptr<Backend> backend) : manifest_(std::move(manifest)), backend_(std::move(backend)) {
  if (!backend_) throw Error("Pipeline needs a backend");
  const std::vector<std::string> opened = backend_->graphs();
  auto has = [&](const char* g) { return std::find(opened.begin(), opened.end(), g) != opened.end(); };
  fused_ = has("unet_decoder_fused");
  for (const char* g : {"text_encoder", "unet_encoder", fused_ ? "unet_decoder_fused" : "unet_decoder", "vae_decoder"})
    if (!has(g)) throw InputError(backend_->name() + " did not open " + g + ": open the bundle's fused or unfused chain");
}

void Pipeline::check_inputs(const Tensor& ids, const Tensor& noise) const {
  const auto& spec = manifest_.graph("text_encoder").input("input_ids");
  if (ids.dtype() != DType::Int64 || ids.shape.size() != 2)
    throw InputError("token ids must be int64 (B, L), got " + std::string(dtype_name(ids.dtype())) + " " + shape_str(ids.shape));
  const int64_t b = ids.shape[0];
  if (b < 1) throw InputError("no prompt given (token ids have 0 rows)");
  if (ids.shape != spec.concrete(b, manifest_.sampler.k))
    throw InputError("token ids have shape " + shape_str(ids.shape) + ", this bundle needs " + shape_str(spec.concrete(b, manifest_.sampler.k)) +
                     " (padded to " + std::to_string(manifest_.tokenizer.max_length) + " tokens by its tokenizer)");
  if (spec.value_range) {
    const auto [lo, hi] = *spec.value_range;
    for (int64_t i = 0; i < ids.size(); ++i)
      if (ids.i64()[i] < lo || ids.i64()[i] >= hi)
        throw InputError("token id " + std::to_string(ids.i64()[i]) + " is outside this bundle's vocabulary [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "): tokenize with the bundle's tokenizer");
  }
  if (noise.dtype() != DType::Float32) throw InputError("noise must be float32, got " + std::string(dtype_name(noise.dtype())));
  if (noise.shape != manifest_.latent_shape(b))
    throw InputError("noise has shape " + shape_str(noise.shape) + ", this bundle needs " + shape_str(manifest_.latent_shape(b)) +
                     " for " + std::to_string(b) + " prompt(s)");
}

Tensor Pipeline::single_output(const std::string& graph, const std::string& output, const Feed& feed) {
  TensorMap out = backend_->run(graph, feed);
  auto it = out.find(output);
  if (it == out.end()) throw Error("graph " + graph + " returned no '" + output + "'");
  return std::move(it->second);
}

Tensor Pipeline::encode_text(const Tensor& input_ids) {
  return single_output("text_encoder", "text_embeddings", {{"input_ids", input_ids}});
}

TensorMap Pipeline::encode(const Tensor& noise, const Tensor& text) {
  return backend_->run("unet_encoder", {{"latents", noise}, {"text_embeddings", text}});
}

Tensor Pipeline::decode(const TensorMap& features, const Tensor& text) {
  Feed feed{{"text_embeddings", text}};
  for (const auto& [name, tensor] : features) feed.emplace(name, tensor);
  return single_output("unet_decoder", "eps", feed);
}

Tensor Pipeline::decode_fused(const TensorMap& features, const Tensor& text, const Tensor& noise) {
  Feed feed{{"text_embeddings", text}, {"latents", noise}};
  for (const auto& [name, tensor] : features) feed.emplace(name, tensor);
  return single_output("unet_decoder_fused", "z0", feed);
}

Tensor Pipeline::decode_latents(const Tensor& z0) {
  // vae_decoder's input is named "latents" too, but it is z0 here (the graph divides by the
  // VAE scaling factor itself).
  return single_output("vae_decoder", "images", {{"latents", z0}});
}

namespace {

/// A stage whose output holds NaN or Inf makes a garbage image: refuse it, naming the stage.
void require_finite(const char* stage, const char* output, const Tensor& t) {
  if (!all_finite(t))
    throw Error(std::string(stage) + " produced non-finite values (NaN or Inf) in " + output +
                ": no image written (a damaged bundle? tiue_infer --verify checks its files)");
}

}  // namespace

Result Pipeline::run(const Tensor& input_ids, const Tensor& noise) {
  check_inputs(input_ids, noise);
  if (!all_finite(noise)) throw InputError("noise holds non-finite values (NaN or Inf)");
  std::unique_lock<std::mutex> turn(serial_, std::defer_lock);
  if (!backend_->concurrent_runs()) turn.lock();
  Result r;
  auto timed = [&](const char* stage, auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    auto out = fn();
    r.seconds[stage] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  };
  r.text_embeddings = timed("text_encoder", [&] { return encode_text(input_ids); });
  require_finite("text_encoder", "text_embeddings", r.text_embeddings);
  TensorMap features = timed("unet_encoder", [&] { return encode(noise, r.text_embeddings); });
  for (const auto& [name, t] : features) require_finite("unet_encoder", name.c_str(), t);
  if (fused_) {
    r.latents = timed("unet_decoder", [&] { return decode_fused(features, r.text_embeddings, noise); });
    require_finite("unet_decoder_fused", "z0", r.latents);
  } else {
    Tensor eps = timed("unet_decoder", [&] { return decode(features, r.text_embeddings); });
    require_finite("unet_decoder", "eps", eps);
    r.latents = combine_one_pass(noise, eps, manifest_.sampler.S, manifest_.sampler.E);
    require_finite("Eq. 11 (combine_one_pass)", "z0", r.latents);
  }
  r.images = timed("vae_decoder", [&] { return decode_latents(r.latents); });
  require_finite("vae_decoder", "images", r.images);
  return r;
}

}  // namespace tiue
