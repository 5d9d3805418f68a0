#include "tiue/tokenizer.hpp"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "tiue/error.hpp"

namespace tiue {

namespace {

using json = nlohmann::json;
using Codepoints = std::u32string;

// CLIP's pre-tokenizer pattern as transformers' CLIPConverter writes it; the matcher below
// implements exactly this regex (Oniguruma semantics: ordered alternatives, greedy classes).
const char* const kClipPattern =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

// -- UTF-8 <-> code points -----------------------------------------------------------------------
/// Decodes `s` into `out`; returns the offset of the first byte that is not UTF-8 (`out` then holds
/// the characters before it), or std::string::npos.
std::size_t decode_utf8_into(const std::string& s, Codepoints& out) {
  out.clear();
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xe ? 3 : (b0 >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return i;
    char32_t c = len == 1 ? b0 : len == 2 ? (b0 & 0x1f) : len == 3 ? (b0 & 0x0f) : (b0 & 0x07);
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b >> 6) != 0x2) return i;
      c = (c << 6) | (b & 0x3f);
    }
    const char32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return i;  // overlong, out of range, surrogate
    out.push_back(c);
    i += static_cast<std::size_t>(len);
  }
  return std::string::npos;
}

std::string byte_hex(unsigned char b, const char* format) {
  char hex[8];
  std::snprintf(hex, sizeof hex, format, static_cast<unsigned>(b));
  return hex;
}

Codepoints decode_utf8(const std::string& s) {
  Codepoints out;
  const std::size_t bad = decode_utf8_into(s, out);
  if (bad != std::string::npos)  // tiue_export.prompts' wording: the byte, and how many characters precede it
    throw InputError("prompt holds a byte " + byte_hex(static_cast<unsigned char>(s[bad]), "%#04x") + " at character " +
                     std::to_string(out.size()) + " that is not UTF-8 text: give the prompt in UTF-8");
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xc0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xe0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  }
}

std::string encode_utf8(const Codepoints& cps) {
  std::string out;
  for (char32_t c : cps) append_utf8(out, c);
  return out;
}

// -- character classes (Unicode general categories, as \p{L}, \p{N}, \s) -----------------------
bool is_letter(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER: case U_OTHER_LETTER:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER:
      return true;
    default:
      return false;
  }
}

bool is_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

bool is_other(char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }

// -- normalizers ---------------------------------------------------------------------------------
using Normalizer = std::function<Codepoints(const Codepoints&)>;

Normalizer unicode_form(const std::string& type) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                              : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                              : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                               : icu::Normalizer2::getNFKDInstance(status);
  if (U_FAILURE(status)) throw Error(std::string("ICU cannot make its ") + type + " normalizer: " + u_errorName(status));
  return [n, type](const Codepoints& in) {
    const std::string utf8 = encode_utf8(in);
    UErrorCode st = U_ZERO_ERROR;
    const icu::UnicodeString out = n->normalize(icu::UnicodeString::fromUTF8(utf8), st);
    if (U_FAILURE(st)) throw Error(std::string("ICU ") + type + " normalization failed: " + u_errorName(st));
    std::string back;
    out.toUTF8String(back);
    return decode_utf8(back);
  };
}

// Rust's char::to_lowercase, which tokenizers' Lowercase applies character by character: the
// simple lower-case mapping, except U+0130 whose full mapping is two characters.
Codepoints lowercase(const Codepoints& in) {
  Codepoints out;
  out.reserve(in.size());
  for (char32_t c : in) {
    if (c == 0x130) {
      out += U'i';
      out += char32_t{0x307};
    } else {
      out += static_cast<char32_t>(u_tolower(static_cast<UChar32>(c)));
    }
  }
  return out;
}

Normalizer make_normalizer(const json& j) {
  if (j.is_null()) return [](const Codepoints& s) { return s; };
  const std::string type = j.at("type").get<std::string>();
  if (type == "Sequence") {
    std::vector<Normalizer> steps;
    for (const auto& n : j.at("normalizers")) steps.push_back(make_normalizer(n));
    return [steps](const Codepoints& s) {
      Codepoints out = s;
      for (const auto& step : steps) out = step(out);
      return out;
    };
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") return unicode_form(type);
  if (type == "Lowercase") return lowercase;
  if (type == "Replace") {
    const auto& pattern = j.at("pattern");
    const Codepoints content = decode_utf8(j.at("content").get<std::string>());
    if (pattern.contains("Regex") && pattern.at("Regex").get<std::string>() == "\\s+") {
      return [content](const Codepoints& s) {  // every whitespace run becomes `content`
        Codepoints out;
        for (std::size_t i = 0; i < s.size();) {
          if (!is_space(s[i])) {
            out += s[i++];
            continue;
          }
          while (i < s.size() && is_space(s[i])) ++i;
          out += content;
        }
        return out;
      };
    }
    if (pattern.contains("String")) {
      const Codepoints from = decode_utf8(pattern.at("String").get<std::string>());
      if (from.empty()) throw InputError("tokenizer.json: a Replace normalizer with an empty pattern");
      return [from, content](const Codepoints& s) {
        Codepoints out;
        for (std::size_t i = 0; i < s.size();) {
          if (s.compare(i, from.size(), from) == 0) {
            out += content;
            i += from.size();
          } else {
            out += s[i++];
          }
        }
        return out;
      };
    }
    throw InputError("tokenizer.json: Replace normalizer pattern " + pattern.dump() + " is not supported (only \\s+ and plain strings)");
  }
  throw InputError("tokenizer.json: normalizer '" + type + "' is not supported by the C++ tokenizer");
}

// -- pre-tokenizers ------------------------------------------------------------------------------
using Span = std::pair<std::size_t, std::size_t>;  // [begin, end) in code points

bool starts_with_ascii(const Codepoints& s, std::size_t i, const char* lit) {
  for (std::size_t k = 0; lit[k]; ++k)
    if (i + k >= s.size() || s[i + k] != static_cast<char32_t>(static_cast<unsigned char>(lit[k]))) return false;
  return true;
}

const char* const kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};

/// Length of the contraction at i, or 0.
std::size_t contraction_at(const Codepoints& s, std::size_t i) {
  for (const char* c : kContractions)
    if (starts_with_ascii(s, i, c)) return std::char_traits<char>::length(c);
  return 0;
}

std::size_t run_of(const Codepoints& s, std::size_t i, bool (*cls)(char32_t)) {
  std::size_t j = i;
  while (j < s.size() && cls(s[j])) ++j;
  return j - i;
}

/// The matches of kClipPattern in `s` (what Split(invert=true, behavior=Removed) keeps).
std::vector<Span> clip_split(const Codepoints& s) {
  std::vector<Span> out;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = 0;
    if (starts_with_ascii(s, i, "<|startoftext|>")) n = 15;
    else if (starts_with_ascii(s, i, "<|endoftext|>")) n = 13;
    else if ((n = contraction_at(s, i))) {}
    else if ((n = run_of(s, i, is_letter))) {}
    else if (is_number(s[i])) n = 1;
    else n = run_of(s, i, is_other);
    if (n == 0) {
      ++i;  // whitespace: not matched, removed
      continue;
    }
    out.emplace_back(i, i + n);
    i += n;
  }
  return out;
}

/// GPT-2's pattern, which the ByteLevel pre-tokenizer applies when use_regex is true:
/// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ (every character
/// lands in some match).
std::vector<Span> gpt2_split(const Codepoints& s, std::size_t begin, std::size_t end) {
  const Codepoints part = s.substr(begin, end - begin);
  std::vector<Span> out;
  for (std::size_t i = 0; i < part.size();) {
    std::size_t n = contraction_at(part, i);
    if (n == 0) {
      const std::size_t lead = part[i] == U' ' && i + 1 < part.size() ? 1 : 0;
      for (auto cls : {is_letter, is_number, is_other})
        if ((n = run_of(part, i + lead, cls))) {
          n += lead;
          break;
        }
    }
    if (n == 0) {  // whitespace; a run followed by non-space leaves its last character to the next match
      const std::size_t run = run_of(part, i, is_space);
      n = (i + run == part.size() || run == 1) ? run : run - 1;
    }
    if (n == 0) n = 1;  // unreachable for valid classes; keeps the loop finite
    out.emplace_back(begin + i, begin + i + n);
    i += n;
  }
  return out;
}

/// GPT-2's byte -> printable character table (bytes_to_unicode): printable Latin-1 bytes map to
/// themselves, the other bytes to 256, 257, ... in order.
const std::vector<char32_t>& byte_chars() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      t[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

struct AddedToken {
  Codepoints content;
  int64_t id = 0;
  bool normalized = false;
};

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  std::vector<AddedToken> added;
  Normalizer normalize;
  bool byte_level_regex = true;
  std::unordered_map<std::string, int64_t> vocab;
  std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> merges;  // pair -> (rank, new id)
  std::string suffix, prefix;
  std::optional<int64_t> unk;
  bool fuse_unk = false, ignore_merges = false;
  int64_t cls = 0, sep = 0;

  /// Split `s` on added tokens (leftmost, longest) that have `normalized` == `which`;
  /// calls piece(text) for the text between them and token(id) for each token, in order.
  template <typename Piece, typename Token>
  void split_added(const Codepoints& s, bool which, Piece&& piece, Token&& token) const {
    std::size_t start = 0;
    for (std::size_t i = 0; i < s.size();) {
      const AddedToken* best = nullptr;
      for (const auto& t : added)
        if (t.normalized == which && !t.content.empty() && s.compare(i, t.content.size(), t.content) == 0 &&
            (!best || t.content.size() > best->content.size()))
          best = &t;
      if (!best) {
        ++i;
        continue;
      }
      if (i > start) piece(s.substr(start, i - start));
      token(best->id);
      i += best->content.size();
      start = i;
    }
    if (start < s.size()) piece(s.substr(start));
  }

  void bpe(const std::string& word, std::vector<int64_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    // one symbol per character, the suffix on the last one; unknown characters become unk
    const Codepoints chars = decode_utf8(word);
    std::vector<int64_t> symbols;
    bool pending_unk = false;
    for (std::size_t i = 0; i < chars.size(); ++i) {
      std::string s;
      if (i > 0) s += prefix;
      append_utf8(s, chars[i]);
      if (i + 1 == chars.size()) s += suffix;
      auto it = vocab.find(s);
      if (it != vocab.end()) {
        if (pending_unk) symbols.push_back(*unk);
        pending_unk = false;
        symbols.push_back(it->second);
      } else if (unk) {
        if (pending_unk && !fuse_unk) symbols.push_back(*unk);
        pending_unk = true;
      }
    }
    if (pending_unk) symbols.push_back(*unk);
    // merge the adjacent pair of lowest rank (leftmost on ties) until none is in the table
    for (;;) {
      std::size_t best = symbols.size();
      std::pair<int64_t, int64_t> best_merge{0, 0};
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto it = merges.find({symbols[i], symbols[i + 1]});
        if (it != merges.end() && (best == symbols.size() || it->second.first < best_merge.first)) {
          best = i;
          best_merge = it->second;
        }
      }
      if (best == symbols.size()) break;
      symbols[best] = best_merge.second;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    out.insert(out.end(), symbols.begin(), symbols.end());
  }

  void words(const Codepoints& normalized, std::vector<int64_t>& out) const {
    const auto& bytes = byte_chars();
    for (const Span& piece : clip_split(normalized)) {
      std::vector<Span> parts = byte_level_regex ? gpt2_split(normalized, piece.first, piece.second) : std::vector<Span>{piece};
      for (const Span& p : parts) {
        std::string word;
        for (unsigned char b : encode_utf8(normalized.substr(p.first, p.second - p.first))) append_utf8(word, bytes[b]);
        bpe(word, out);
      }
    }
  }
};

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw InputError("tokenizer.json: " + what + " is not supported by the C++ tokenizer");
}

std::shared_ptr<Tokenizer::Impl> parse(const json& j, const TokenizerSpec& spec) {
  auto impl = std::make_shared<Tokenizer::Impl>();
  impl->spec = spec;
  const auto& model = j.at("model");
  require(model.value("type", std::string("BPE")) == "BPE", "model type '" + model.value("type", std::string()) + "'");
  require(model.value("dropout", json()).is_null() || model.at("dropout").get<double>() == 0.0, "BPE dropout");
  require(!model.value("byte_fallback", false), "BPE byte_fallback");
  for (const auto& [token, id] : model.at("vocab").items()) impl->vocab.emplace(token, id.get<int64_t>());
  impl->prefix = model.value("continuing_subword_prefix", json()).is_string() ? model.at("continuing_subword_prefix").get<std::string>() : "";
  impl->suffix = model.value("end_of_word_suffix", json()).is_string() ? model.at("end_of_word_suffix").get<std::string>() : "";
  impl->fuse_unk = model.value("fuse_unk", false);
  impl->ignore_merges = model.value("ignore_merges", false);
  if (model.value("unk_token", json()).is_string()) {
    auto it = impl->vocab.find(model.at("unk_token").get<std::string>());
    if (it == impl->vocab.end()) throw InputError("tokenizer.json: unk_token is not in the vocabulary");
    impl->unk = it->second;
  }
  int64_t rank = 0;
  for (const auto& m : model.at("merges")) {
    std::string a, b;
    if (m.is_array()) {
      a = m.at(0).get<std::string>();
      b = m.at(1).get<std::string>();
    } else {
      const auto s = m.get<std::string>();
      const auto space = s.find(' ');
      if (space == std::string::npos) throw InputError("tokenizer.json: bad merge '" + s + "'");
      a = s.substr(0, space);
      b = s.substr(space + 1);
    }
    const std::string merged = a + b.substr(std::min(impl->prefix.size(), b.size()));
    auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), im = impl->vocab.find(merged);
    if (ia == impl->vocab.end() || ib == impl->vocab.end() || im == impl->vocab.end())
      throw InputError("tokenizer.json: merge '" + a + " " + b + "' names a token outside the vocabulary");
    impl->merges.emplace(std::make_pair(ia->second, ib->second), std::make_pair(rank++, im->second));
  }

  for (const auto& t : j.value("added_tokens", json::array())) {
    require(!t.value("lstrip", false) && !t.value("rstrip", false) && !t.value("single_word", false),
            "added token stripping or single_word ('" + t.at("content").get<std::string>() + "')");
    impl->added.push_back({decode_utf8(t.at("content").get<std::string>()), t.at("id").get<int64_t>(), t.value("normalized", false)});
  }
  impl->normalize = make_normalizer(j.value("normalizer", json()));

  // pre-tokenizer: CLIP's Split, then ByteLevel without a prefix space
  const json pre = j.value("pre_tokenizer", json());
  require(pre.is_object() && pre.value("type", std::string()) == "Sequence" && pre.at("pretokenizers").size() == 2,
          "a pre_tokenizer other than CLIP's Sequence[Split, ByteLevel]");
  const auto& split = pre.at("pretokenizers").at(0);
  const auto& byte_level = pre.at("pretokenizers").at(1);
  require(split.value("type", std::string()) == "Split" && split.at("pattern").value("Regex", std::string()) == kClipPattern &&
              split.value("behavior", std::string()) == "Removed" && split.value("invert", false),
          "a Split pre-tokenizer other than CLIP's pattern (" + split.dump().substr(0, 120) + ")");
  require(byte_level.value("type", std::string()) == "ByteLevel" && !byte_level.value("add_prefix_space", false),
          "a ByteLevel pre-tokenizer with add_prefix_space");
  impl->byte_level_regex = byte_level.value("use_regex", true);

  const json post = j.value("post_processor", json());
  require(post.is_object() && post.value("type", std::string()) == "RobertaProcessing", "a post_processor other than RobertaProcessing");
  impl->cls = post.at("cls").at(1).get<int64_t>();
  impl->sep = post.at("sep").at(1).get<int64_t>();
  if (impl->cls != spec.bos_id || impl->sep != spec.eos_id)
    throw InputError("tokenizer.json adds <bos> " + std::to_string(impl->cls) + " and <eos> " + std::to_string(impl->sep) + ", the manifest says " +
                     std::to_string(spec.bos_id) + " and " + std::to_string(spec.eos_id) + ": re-export the bundle");
  if (spec.max_length < 2) throw InputError("tokenizer: model_max_length " + std::to_string(spec.max_length) + " leaves no room for <bos> and <eos>");
  return impl;
}

std::string preview(const std::string& text) {
  // The first 60 characters, quoted as Python's %r would for plain text.
  Codepoints cps = decode_utf8(text);
  if (cps.size() > 60) cps.resize(60);
  return "'" + encode_utf8(cps) + "'";
}

}  // namespace

Tokenizer Tokenizer::load(const std::filesystem::path& path, const TokenizerSpec& spec) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open the tokenizer (is the bundle complete?)");
  json j;
  try {
    j = json::parse(in);
    return Tokenizer(parse(j, spec));
  } catch (const json::exception& e) {
    throw InputError(path.string() + ": not a tokenizer.json this runtime reads: " + first_line(e.what()));
  } catch (const InputError& e) {
    throw InputError(path.string() + ": " + e.what());
  }
}

Tokenizer Tokenizer::from_bundle(const Manifest& manifest) { return load(manifest.dir / manifest.tokenizer.file, manifest.tokenizer); }

int64_t Tokenizer::max_length() const { return impl_->spec.max_length; }

std::vector<int64_t> Tokenizer::encode_words(const std::string& text) const {
  const Impl& t = *impl_;
  std::vector<int64_t> ids;
  // added tokens matched on the raw text, then (inside each remaining piece, after normalizing)
  // those matched on normalized text, as tokenizers' AddedVocabulary::extract_and_normalize
  t.split_added(
      decode_utf8(text), false,
      [&](const Codepoints& raw) {
        t.split_added(t.normalize(raw), true, [&](const Codepoints& normalized) { t.words(normalized, ids); },
                      [&](int64_t id) { ids.push_back(id); });
      },
      [&](int64_t id) { ids.push_back(id); });
  return ids;
}

Tokenizer::Encoding Tokenizer::encode(const std::string& text) const {
  const auto& spec = impl_->spec;
  std::vector<int64_t> words = encode_words(text);
  Encoding e;
  const auto room = static_cast<std::size_t>(spec.max_length - 2);
  e.truncated = words.size() > room;
  if (e.truncated) words.resize(room);
  e.ids.reserve(static_cast<std::size_t>(spec.max_length));
  e.ids.push_back(impl_->cls);
  e.ids.insert(e.ids.end(), words.begin(), words.end());
  e.ids.push_back(impl_->sep);
  e.ids.resize(static_cast<std::size_t>(spec.max_length), spec.pad_id);
  return e;
}

namespace {
// Python's str.isspace: Unicode White_Space and the information separators U+001C..U+001F
bool py_space(char32_t c) { return is_space(c) || (c >= 0x1c && c <= 0x1f); }

/// decode_utf8, its error naming the prompt as `what` does ("--prompt", "FILE:3: the prompt").
Codepoints decode_prompt(const std::string& text, const std::string& what) {
  try {
    return decode_utf8(text);
  } catch (const InputError& e) {  // "prompt holds a byte ..."
    throw InputError(what + std::string(e.what()).substr(std::string("prompt").size()));
  }
}
}  // namespace

bool is_blank(const std::string& text) {
  Codepoints cps;
  return decode_utf8_into(text, cps) == std::string::npos && std::all_of(cps.begin(), cps.end(), py_space);
}

std::vector<std::string> read_prompt_lines(const std::string& bytes, const std::string& path) {
  Codepoints text;
  if (const std::size_t at = decode_utf8_into(bytes, text); at != std::string::npos) {  // as tiue_export.files.read_text
    const auto line = std::count(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(at), '\n') + 1;
    throw InputError("prompts file " + path + " is not UTF-8 text (line " + std::to_string(line) + ", byte " + std::to_string(at) +
                     ": b'\\x" + byte_hex(static_cast<unsigned char>(bytes[at]), "%02x") + "')");
  }
  // Python's universal newlines (\r\n is one break), then str.splitlines' line boundaries
  auto boundary = [](char32_t c) {
    return c == U'\n' || c == U'\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 || c == 0x2028 ||
           c == 0x2029;
  };
  std::vector<std::string> out;
  std::size_t n = 0, begin = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i < text.size() && !boundary(text[i])) continue;
    if (i == text.size() && begin == i) break;  // no line after a final line break
    ++n;
    auto first = text.begin() + static_cast<std::ptrdiff_t>(begin), last = text.begin() + static_cast<std::ptrdiff_t>(i);
    while (first < last && py_space(*first)) ++first;
    while (last > first && py_space(*(last - 1))) --last;
    if (first < last) {
      out.push_back(encode_utf8(Codepoints(first, last)));
      check_prompt(out.back(), path + ":" + std::to_string(n) + ": the prompt");
    }
    if (i + 1 < text.size() && text[i] == U'\r' && text[i + 1] == U'\n') ++i;
    begin = i + 1;
  }
  return out;
}

void check_prompt(const std::string& prompt, const std::string& what) {
  const Codepoints cps = decode_prompt(prompt, what);
  if (std::all_of(cps.begin(), cps.end(), py_space)) throw InputError(what + " is empty");
  if (cps.size() > kMaxPromptChars)
    throw InputError(what + " is " + std::to_string(cps.size()) + " characters long, over " + std::to_string(kMaxPromptChars) +
                     ": the text encoder reads only the first 77 tokens (a few hundred characters)");
}

Tensor Tokenizer::operator()(const std::vector<std::string>& prompts, const WarningHandler& warn) const {
  for (const auto& p : prompts) check_prompt(p);  // all of them before any is tokenized
  const int64_t n = impl_->spec.max_length;
  std::vector<int64_t> ids;
  ids.reserve(prompts.size() * static_cast<std::size_t>(n));
  for (const auto& p : prompts) {
    Encoding e = encode(p);
    if (e.truncated && warn) warn("prompt is longer than this model's " + std::to_string(n) + " tokens: truncated: " + preview(p));
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
  }
  return Tensor::of({static_cast<int64_t>(prompts.size()), n}, std::move(ids));
}

}  // namespace tiue
