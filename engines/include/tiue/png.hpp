// PNG files through libpng, with text metadata as iTXt chunks (UTF-8), the way
// tiue_export.io.write_png (Pillow's add_itxt) writes them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace tiue {

/// Text chunks in order: (keyword, UTF-8 value). Keywords are 1-79 printable Latin-1 characters.
using PngText = std::vector<std::pair<std::string, std::string>>;

/// Write an H x W RGB uint8 image (HWC, row-major) as an 8-bit RGB PNG with `text`, atomically
/// (a temporary file beside `path`, then a rename). Throws InputError for a bad keyword or an
/// unwritable directory, Error when libpng or the write fails.
void write_png(const std::filesystem::path& path, const uint8_t* hwc, int64_t height, int64_t width, const PngText& text = {});

}  // namespace tiue
