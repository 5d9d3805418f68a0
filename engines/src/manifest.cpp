#include "tiue/manifest.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "tiue/error.hpp"
#include "tiue/schedule.hpp"

#ifdef TIUE_WITH_OPENSSL
#include <openssl/evp.h>
#endif

namespace tiue {

namespace fs = std::filesystem;
using nlohmann::json;

std::string dims_str(const std::vector<Dim>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + (shape[i].symbol.empty() ? std::to_string(shape[i].value) : shape[i].symbol);
  return out + "]";
}

Shape TensorSpec::concrete(int64_t batch, int64_t k) const {
  Shape out;
  for (const auto& d : shape) {
    if (d.symbol.empty()) out.push_back(d.value);
    else if (d.symbol == "B") out.push_back(batch);
    else if (d.symbol == "KB") out.push_back(k * batch);
    else throw InputError("tensor " + name + ": unknown symbolic axis '" + d.symbol + "'");
  }
  return out;
}

const TensorSpec& GraphSpec::input(const std::string& n) const {
  for (const auto& t : inputs)
    if (t.name == n) return t;
  throw InputError("graph " + name + " has no input '" + n + "': re-export the bundle");
}

const TensorSpec& GraphSpec::output(const std::string& n) const {
  for (const auto& t : outputs)
    if (t.name == n) return t;
  throw InputError("graph " + name + " has no output '" + n + "': re-export the bundle");
}

const TensorSpec* GraphSpec::find(const std::string& n) const {
  for (const auto* list : {&inputs, &outputs})
    for (const auto& t : *list)
      if (t.name == n) return &t;
  return nullptr;
}

namespace {

TensorSpec tensor_spec(const json& j) {
  TensorSpec t;
  t.name = j.at("name").get<std::string>();
  t.dtype = dtype_from_name(j.at("dtype").get<std::string>());
  for (const auto& d : j.at("shape")) {
    if (d.is_string()) t.shape.push_back({0, d.get<std::string>()});
    else t.shape.push_back({d.get<int64_t>(), ""});
  }
  if (j.contains("value_range")) {
    const auto& vr = j.at("value_range");
    t.value_range = std::make_pair(vr.at(0).get<int64_t>(), vr.at(1).get<int64_t>());
  }
  return t;
}

GraphSpec graph_spec(const std::string& name, const json& j) {
  GraphSpec g;
  g.name = name;
  g.file = j.at("file").get<std::string>();
  g.sha256 = j.at("sha256").get<std::string>();
  g.precision = j.value("precision", "fp32");
  for (const auto& t : j.at("inputs")) g.inputs.push_back(tensor_spec(t));
  for (const auto& t : j.at("outputs")) g.outputs.push_back(tensor_spec(t));
  if (j.contains("external_data")) g.external_data = j.at("external_data").get<std::vector<std::string>>();
  if (j.contains("variants") && !j.at("variants").is_null())
    for (const auto& [vname, v] : j.at("variants").items())
      g.variants.emplace(vname, GraphVariant{v.at("file").get<std::string>(), v.at("precision").get<std::string>(), v.at("sha256").get<std::string>(),
                                             v.value("external_data", std::vector<std::string>{})});
  return g;
}

/// The dotted path of the field a json exception is about is not reported by nlohmann; the
/// caller names the section it was reading instead.
template <typename F>
auto section(const fs::path& mpath, const char* name, F&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const json::exception& e) {
    throw InputError(mpath.string() + ": bad or incomplete '" + name + "' (" + first_line(e.what()) + "): re-export the bundle");
  }
}

/// S and E are float64 when written (numpy) and when recomputed here; this leaves room for another
/// libm, not for an edited value (moving one timestep moves E by ~1e-3). As COEFFICIENT_RTOL in
/// tiue_export/bundle/directory.py.
constexpr double kCoefficientRtol = 1e-9;

/// The shortest text that reads back as `x` (as Python's repr), for messages about coefficients.
std::string repr(double x) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, res.ptr);
}

template <typename T>
std::string list_str(const std::vector<T>& v) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
  out << "]";
  return out.str();
}

/// Every input of every graph of `chain` has one source that exists earlier in the chain, with
/// its shape; as check_chain in tiue_export/bundle/directory.py (same messages).
template <typename Bad>
void check_chain(const Manifest& m, const std::string& name, const Chain& chain, Bad&& bad) {
  std::map<std::string, std::optional<std::vector<Dim>>> produced = {{"inputs.input_ids", std::nullopt}, {"inputs.noise", std::nullopt}};
  std::function<std::optional<std::vector<Dim>>(const std::string&)> resolve = [&](const std::string& dest) {
    auto it = chain.sources.find(dest);
    if (it == chain.sources.end()) bad("chain " + name + ": nothing feeds " + dest);
    const std::string& src = it->second;
    if (src == "eq11.z0" && !produced.count(src)) {
      resolve("eq11.latents");
      resolve("eq11.eps");
      produced[src] = std::vector<Dim>{{0, "B"}, {m.latent[0], ""}, {m.latent[1], ""}, {m.latent[2], ""}};
    }
    auto p = produced.find(src);
    if (p == produced.end()) bad("chain " + name + ": " + dest + " is fed by " + src + ", which no earlier graph of the chain produces");
    return p->second;
  };
  for (const auto& graph : chain.graphs) {
    auto g = m.graphs.find(graph);
    if (g == m.graphs.end()) bad("chain " + name + " runs graph '" + graph + "', which the manifest lacks");
    for (const auto& t : g->second.inputs) {
      const auto shape = resolve(graph + "." + t.name);
      if (shape && *shape != t.shape)
        bad("chain " + name + ": " + graph + "." + t.name + " " + dims_str(t.shape) + " is fed a tensor of shape " + dims_str(*shape));
    }
    for (const auto& t : g->second.outputs) produced[graph + "." + t.name] = t.shape;
  }
  for (const char* out : {"z0", "images"}) resolve(std::string("outputs.") + out);
}

/// runtime.fused and runtime.unfused (what runtimes that predate chains read) are the graph
/// lists of the chains of those names; as check_runtime_lists in tiue_export/bundle/directory.py.
void check_runtime_lists(const Manifest& m, const fs::path& mpath) {
  for (const auto& [name, list] : {std::make_pair("fused", &m.fused), std::make_pair("unfused", &m.unfused)})
    if (*list != m.chains.at(name).graphs)
      throw InputError(mpath.string() + ": runtime." + name + " " + list_str(*list) + " is not the graphs of chain " + name + " " +
                       list_str(m.chains.at(name).graphs) + ": re-export the bundle");
}

/// The fused and unfused chains as Pipeline runs them (as default_chains in
/// tiue_export/bundle/manifest.py writes them). Python's executor follows any valid wiring; this
/// runtime runs these two, so another is refused rather than run as something else.
void check_standard_wiring(const Manifest& m, const fs::path& mpath) {
  const std::string text = "text_encoder.text_embeddings";
  std::map<std::string, std::string> common = {
      {"text_encoder.input_ids", "inputs.input_ids"}, {"unet_encoder.latents", "inputs.noise"}, {"unet_encoder.text_embeddings", text}};
  std::map<std::string, std::string> fused = common, unfused = common;
  for (const auto& [f, shape] : m.features) {
    fused["unet_decoder_fused." + f] = "unet_encoder." + f;
    unfused["unet_decoder." + f] = "unet_encoder." + f;
  }
  fused.insert({{"unet_decoder_fused.text_embeddings", text}, {"unet_decoder_fused.latents", "inputs.noise"},
                {"vae_decoder.latents", "unet_decoder_fused.z0"}, {"outputs.z0", "unet_decoder_fused.z0"}, {"outputs.images", "vae_decoder.images"}});
  unfused.insert({{"unet_decoder.text_embeddings", text}, {"eq11.latents", "inputs.noise"}, {"eq11.eps", "unet_decoder.eps"},
                  {"vae_decoder.latents", "eq11.z0"}, {"outputs.z0", "eq11.z0"}, {"outputs.images", "vae_decoder.images"}});
  const std::map<std::string, Chain> standard = {
      {"fused", {{"text_encoder", "unet_encoder", "unet_decoder_fused", "vae_decoder"}, fused}},
      {"unfused", {{"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}, unfused}}};
  for (const auto& [name, want] : standard) {
    const Chain& got = m.chains.at(name);
    std::string why;
    if (got.graphs != want.graphs) why = "runs " + list_str(got.graphs) + " instead of " + list_str(want.graphs);
    for (const auto& [dest, src] : want.sources) {
      if (!why.empty()) break;
      auto it = got.sources.find(dest);
      if (it != got.sources.end() && it->second != src) why = "feeds " + dest + " from " + it->second + " instead of " + src;
    }
    if (!why.empty())
      throw InputError(mpath.string() + ": chain " + name + " " + why + ", and this runtime runs only the standard wiring: re-export the bundle");
  }
}

/// What a JSON Schema cannot say, as tiue_export.bundle.io.check_semantics: the sampler agrees
/// with its schedule, the sizes with the graphs' shapes, every graph file with its hash. Reads
/// nothing but the manifest, so a contradiction costs no graph load.
void check_semantics(const Manifest& m, const fs::path& mpath) {
  auto bad = [&](const std::string& msg) { throw InputError(mpath.string() + ": " + msg + ": re-export the bundle"); };

  const SamplerSpec& s = m.sampler;
  const int64_t n_train = s.schedule.num_train_timesteps;
  const auto k = static_cast<std::size_t>(s.k);
  if (s.k < 1 || s.timesteps.size() != k || s.prev_timesteps.size() != k || s.E.size() != k)
    bad("sampler k=" + std::to_string(s.k) + " but " + std::to_string(s.timesteps.size()) + " timesteps, " + std::to_string(s.prev_timesteps.size()) +
        " prev_timesteps and " + std::to_string(s.E.size()) + " E coefficients");
  if (static_cast<int64_t>(s.schedule.alphas_cumprod.size()) != n_train)
    bad("the schedule has " + std::to_string(s.schedule.alphas_cumprod.size()) + " alphas_cumprod for " + std::to_string(n_train) +
        " training timesteps");
  std::vector<int64_t> all = s.timesteps;
  all.push_back(s.encoder_timestep);
  for (const int64_t t : all)
    if (t < 0 || t >= n_train) bad("timestep " + std::to_string(t) + " is outside 0.." + std::to_string(n_train - 1));
  if (s.prev_timesteps != ddim_prev_timesteps(s.timesteps, n_train))
    bad("prev_timesteps " + list_str(s.prev_timesteps) + " do not follow from timesteps " + list_str(s.timesteps));
  const OnePassCoefficients want = one_pass_coefficients(s.schedule.alphas_cumprod, s.timesteps, s.prev_timesteps, s.final_alpha_cumprod);
  auto check = [&](const std::string& name, double expected, double got) {
    // math.isclose(got, expected, rel_tol, abs_tol=0); NaN is never close
    if (!(std::fabs(got - expected) <= kCoefficientRtol * std::max(std::fabs(got), std::fabs(expected))))
      bad("sampler " + name + " = " + repr(got) + ", but the schedule and timesteps give " + repr(expected));
  };
  check("S", want.S, s.S);
  for (std::size_t i = 0; i < k; ++i) check("E[" + std::to_string(i) + "]", want.E[i], s.E[i]);

  const auto [C, h, w] = m.latent;
  const auto [H, W] = m.image;
  auto B = [] { return Dim{0, "B"}; };
  auto n = [](int64_t v) { return Dim{v, ""}; };
  std::vector<std::tuple<std::string, std::string, std::vector<Dim>>> expect = {
      {"text_encoder", "input_ids", {B(), n(m.tokenizer.max_length)}},
      {"unet_encoder", "latents", {B(), n(C), n(h), n(w)}},
      {"vae_decoder", "latents", {B(), n(C), n(h), n(w)}},
      {"vae_decoder", "images", {B(), n(3), n(H), n(W)}},
  };
  for (const auto& [name, f] : m.features) expect.push_back({"unet_encoder", name, {B(), n(f[0]), n(f[1]), n(f[2])}});
  for (const auto& [graph, tensor, shape] : expect) {
    auto it = m.graphs.find(graph);
    if (it == m.graphs.end()) bad("no " + graph + " graph");
    const TensorSpec* t = it->second.find(tensor);
    if (!t) bad(graph + " has no tensor " + tensor);
    if (t->shape != shape) bad(graph + "." + tensor + " has shape " + dims_str(t->shape) + " but the manifest's sizes give " + dims_str(shape));
  }
  if (h < 1 || w < 1 || H % h || W % w || H / h != W / w)
    bad("image " + std::to_string(H) + "x" + std::to_string(W) + " is not a whole multiple of the latent " + std::to_string(h) + "x" + std::to_string(w));
  std::set<std::string> outputs;
  for (const auto& t : m.graph("unet_encoder").outputs) outputs.insert(t.name);
  std::set<std::string> features;
  for (const auto& [name, f] : m.features) features.insert(name);
  if (features != outputs) bad("features " + list_str(std::vector<std::string>(features.begin(), features.end())) +
                               " are not the encoder's outputs " + list_str(std::vector<std::string>(outputs.begin(), outputs.end())));

  for (const auto& [name, chain] : m.chains) check_chain(m, name, chain, bad);

  auto listed = [&](const std::string& label, const std::string& file, const std::string& digest) {
    auto it = m.files.find(file);
    if (it == m.files.end()) bad(label + ": file " + file + " is not among the bundle's files");
    if (it->second != digest) bad(label + ": file " + file + " has another sha256 than the graph records");
  };
  for (const auto& [name, g] : m.graphs) {
    listed(name, g.file, g.sha256);
    for (const auto& [vname, v] : g.variants) listed(name + " variant " + vname, v.file, v.sha256);
  }
  for (const auto& [precision, set] : m.engines)
    for (const auto& [graph, file] : set.files)
      if (!m.files.count(file)) bad(precision + " engine of " + graph + ": " + file + " is not among the bundle's files");
}

}  // namespace

Manifest Manifest::load(const fs::path& dir) {
  const fs::path mpath = dir / "manifest.json";
  if (!fs::exists(dir)) throw InputError("bundle " + dir.string() + " does not exist");
  if (!fs::is_directory(dir)) throw InputError("bundle " + dir.string() + " is not a directory");
  if (!fs::is_regular_file(mpath))
    throw InputError("bundle " + dir.string() + " has no manifest.json: not a tiue-export bundle (tiue-export export --out DIR writes one)");
  json j;
  {
    std::ifstream in(mpath);
    // nlohmann parses without recursion but gives no depth limit of its own; this one keeps
    // every reader of the manifest (and Python's json, whose limit is the interpreter's stack) on
    // the same side of one rule.
    const json::parser_callback_t depth_limit = [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth >= kMaxJsonDepth)
        throw InputError(mpath.string() + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels: not a tiue-export manifest");
      return true;
    };
    try {
      j = json::parse(in, depth_limit);
    } catch (const json::exception& e) {
      throw InputError(mpath.string() + ": not valid JSON (" + first_line(e.what()) + "): re-export the bundle");
    }
  }
  if (!j.is_object() || !j.contains("schema_version") || !j["schema_version"].is_number_integer())
    throw InputError(mpath.string() + ": no schema_version: not a tiue-export manifest");

  Manifest m;
  m.dir = dir;
  m.schema_version = j["schema_version"].get<int>();
  if (m.schema_version > kSchemaVersion)
    throw InputError(mpath.string() + ": manifest schema_version " + std::to_string(m.schema_version) +
                     " is newer than this runtime reads (" + std::to_string(kSchemaVersion) + "): rebuild tiue_engines");
  if (m.schema_version < kSchemaVersion)
    throw InputError(mpath.string() + ": manifest schema_version " + std::to_string(m.schema_version) +
                     " is older than this runtime reads (" + std::to_string(kSchemaVersion) + "): re-export the bundle");
  m.precision = j.value("precision", "fp32");

  section(mpath, "axis_relations", [&] {
    const auto kb = j.at("axis_relations").at("KB").get<std::string>();
    if (kb != "K*B") throw InputError(mpath.string() + ": axis KB is '" + kb + "', this runtime knows only K*B");
    return 0;
  });
  section(mpath, "graphs", [&] {
    for (const auto& [name, entry] : j.at("graphs").items()) m.graphs.emplace(name, graph_spec(name, entry));
    return 0;
  });
  section(mpath, "runtime", [&] {
    const auto& r = j.at("runtime");
    m.fused = r.at("fused").get<std::vector<std::string>>();
    m.unfused = r.at("unfused").get<std::vector<std::string>>();
    for (const auto& [name, c] : r.at("chains").items())
      m.chains.emplace(name, Chain{c.at("graphs").get<std::vector<std::string>>(), c.at("sources").get<std::map<std::string, std::string>>()});
    for (const char* name : {"fused", "unfused"})
      if (!m.chains.count(name)) throw InputError(mpath.string() + ": runtime.chains has no " + name + " chain: re-export the bundle");
    return 0;
  });
  section(mpath, "sampler", [&] {
    const auto& s = j.at("sampler");
    if (s.at("kind").get<std::string>() != "one-pass")
      throw InputError(mpath.string() + ": sampler kind '" + s.at("kind").get<std::string>() + "' is not one-pass");
    m.sampler.k = s.at("k").get<int>();
    m.sampler.timesteps = s.at("timesteps").get<std::vector<int64_t>>();
    m.sampler.encoder_timestep = s.at("encoder_timestep").get<int64_t>();
    m.sampler.prev_timesteps = s.at("prev_timesteps").get<std::vector<int64_t>>();
    m.sampler.final_alpha_cumprod = s.at("final_alpha_cumprod").get<double>();
    m.sampler.S = s.at("S").get<double>();
    m.sampler.E = s.at("E").get<std::vector<double>>();
    const auto& sch = s.at("schedule");
    m.sampler.schedule = {sch.at("num_train_timesteps").get<int64_t>(), sch.at("alphas_cumprod").get<std::vector<double>>()};
    return 0;
  });
  section(mpath, "latent", [&] {
    const auto& l = j.at("latent");
    m.latent = {l.at("channels").get<int64_t>(), l.at("height").get<int64_t>(), l.at("width").get<int64_t>()};
    return 0;
  });
  section(mpath, "image", [&] {
    m.image = {j.at("image").at("height").get<int64_t>(), j.at("image").at("width").get<int64_t>()};
    return 0;
  });
  section(mpath, "features", [&] {
    for (const auto& [name, shape] : j.at("features").items()) m.features[name] = shape.get<std::array<int64_t, 3>>();
    return 0;
  });
  section(mpath, "tokenizer", [&] {
    const auto& t = j.at("tokenizer");
    m.tokenizer = {t.at("file").get<std::string>(), t.at("model_max_length").get<int64_t>(), t.at("pad_id").get<int64_t>(),
                   t.at("bos_id").get<int64_t>(), t.at("eos_id").get<int64_t>()};
    return 0;
  });
  section(mpath, "batch_profile", [&] {
    const auto& b = j.at("batch_profile");
    m.batch_profile = {b.at("min").get<int64_t>(), b.at("opt").get<int64_t>(), b.at("max").get<int64_t>()};
    return 0;
  });
  section(mpath, "files", [&] {
    m.files = j.at("files").get<std::map<std::string, std::string>>();
    return 0;
  });
  // Optional: TensorRT plans written by `tiue-export build-trt`, one set per precision.
  section(mpath, "engines", [&] {
    if (!j.contains("engines")) return 0;
    for (const auto& [precision, e] : j.at("engines").items()) {
      EngineSet set;
      set.precision = precision;
      set.tensorrt = e.at("tensorrt").get<std::string>();
      set.gpu_name = e.at("gpu").value("name", "?");
      set.compute_capability = e.at("gpu").at("compute_capability").get<std::string>();
      const auto& b = e.at("batch_profile");
      set.batch_profile = {b.at("min").get<int64_t>(), b.at("opt").get<int64_t>(), b.at("max").get<int64_t>()};
      set.fused = e.value("fused", true);
      set.pipeline = e.at("pipeline").get<std::vector<std::string>>();
      for (const auto& [graph, g] : e.at("graphs").items()) set.files[graph] = g.at("file").get<std::string>();
      for (const auto& graph : set.pipeline)
        if (!set.files.count(graph) || !m.graphs.count(graph))
          throw InputError(mpath.string() + ": the " + precision + " engines lack a plan for " + graph + ": rebuild them with tiue-export build-trt");
      m.engines.emplace(precision, std::move(set));
    }
    return 0;
  });

  if (!m.graphs.count("unet_encoder")) throw InputError(mpath.string() + ": no unet_encoder graph: re-export the bundle");
  check_semantics(m, mpath);
  check_runtime_lists(m, mpath);
  check_standard_wiring(m, mpath);
  return m;
}

const GraphSpec& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end()) throw InputError("bundle " + dir.string() + " has no graph '" + name + "'");
  return it->second;
}

std::vector<std::string> Manifest::feature_names() const {
  std::vector<std::string> names;
  for (const auto& t : graph("unet_encoder").outputs) names.push_back(t.name);
  return names;
}

bool have_sha256() {
#ifdef TIUE_WITH_OPENSSL
  return true;
#else
  return false;
#endif
}

std::string sha256_file(const fs::path& path) {
#ifdef TIUE_WITH_OPENSSL
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 22);  // 4 MiB chunks: bundles hold multi-GB external data
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 0xf];
  }
  return out;
#else
  throw Error("cannot check " + path.string() + ": tiue_engines was built without OpenSSL (no sha256)");
#endif
}

void Manifest::verify() const {
  if (!have_sha256()) throw Error("--verify needs sha256, and tiue_engines was built without OpenSSL: rebuild with libssl-dev installed");
  for (const auto& [rel, digest] : files) {
    const fs::path f = dir / rel;
    if (!fs::is_regular_file(f)) throw InputError("bundle " + dir.string() + ": " + rel + " is missing: re-export the bundle");
    if (sha256_file(f) != digest) throw InputError("bundle " + dir.string() + ": " + rel + " was altered (sha256 mismatch): re-export the bundle");
  }
}

}  // namespace tiue
