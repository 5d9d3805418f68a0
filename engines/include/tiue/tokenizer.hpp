// The bundle's CLIP tokenizer in C++: reads tokenizer.json (Hugging Face `tokenizers` format) and
// gives the ids tiue_export.runtime.pipeline.BundleTokenizer gives: tokenizer.json's added
// tokens, normalizer (NFC, whitespace runs to one space, lower case), CLIP's pre-tokenizer
// regex, byte-level BPE with the merges table, <bos> ids <eos>, truncation to the manifest's
// model_max_length (<bos> and <eos> kept) and right padding with pad_id.
//
// Only what CLIP tokenizers use is implemented; a tokenizer.json asking for anything else (another
// model type, pre-tokenizer regex or post-processor, BPE dropout, byte fallback, stripping added
// tokens) is refused with InputError naming the field, never tokenized differently.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tiue/manifest.hpp"
#include "tiue/tensor.hpp"

namespace tiue {

/// Receives one line per warning (a truncated prompt), as the Python runtime logs them.
using WarningHandler = std::function<void(const std::string&)>;

/// The longest prompt any runtime takes, in characters (Unicode code points): CLIP's text encoder
/// reads 77 tokens, so a longer text changes nothing in the image and would only be copied whole
/// into every PNG. As MAX_PROMPT_CHARS in tiue_export/prompts.py.
constexpr std::size_t kMaxPromptChars = 10000;

/// The prompt rules of every tiue-export runtime (tiue_export.prompts.check_prompt, the same
/// words): a prompt that is empty or only whitespace (Python's str.isspace) is refused ("prompt is
/// empty"), as is one over kMaxPromptChars characters or not valid UTF-8. `what` names it in the
/// message ("--prompt", "FILE:3: the prompt"). Throws InputError.
void check_prompt(const std::string& prompt, const std::string& what = "prompt");
/// Whether `text` is empty or only whitespace as Python's str.isspace has it (a prompts file's
/// blank line). Text that is not valid UTF-8 is not blank.
bool is_blank(const std::string& text);
/// The prompts of a text prompts file's bytes, as tiue-export infer reads `--prompts-file`: UTF-8
/// (else InputError naming the line and byte), split as Python's str.splitlines, each line stripped
/// of Unicode whitespace, blank lines skipped, every prompt passing check_prompt ("PATH:N: the prompt").
std::vector<std::string> read_prompt_lines(const std::string& bytes, const std::string& path);

class Tokenizer {
 public:
  /// Read `tokenizer_json` with the manifest's rules (max_length, pad, bos and eos ids). Throws
  /// InputError: unreadable, not JSON, or a feature this tokenizer does not implement.
  static Tokenizer load(const std::filesystem::path& tokenizer_json, const TokenizerSpec& spec);
  /// The bundle's tokenizer (manifest.tokenizer.file).
  static Tokenizer from_bundle(const Manifest& manifest);

  /// One prompt (UTF-8) to its ids, before <bos>/<eos>, truncation and padding. Throws
  /// InputError for text that is not valid UTF-8.
  std::vector<int64_t> encode_words(const std::string& text) const;

  struct Encoding {
    std::vector<int64_t> ids;  // max_length ids: <bos> words <eos> pad...
    bool truncated = false;    // the prompt had more than max_length - 2 tokens
  };
  Encoding encode(const std::string& text) const;

  /// int64 (B, max_length) ids for `prompts` (each passing check_prompt, else InputError); `warn`
  /// gets one line per truncated prompt
  /// ("prompt is longer than this model's N tokens: truncated: '...'"); without one, nothing
  /// is reported.
  Tensor operator()(const std::vector<std::string>& prompts, const WarningHandler& warn = {}) const;

  int64_t max_length() const;

  struct Impl;  // opaque

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable once loaded: copies share it, calls are thread-safe
};

}  // namespace tiue
