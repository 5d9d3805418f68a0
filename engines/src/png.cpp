#include "tiue/png.hpp"

#include <png.h>

#include <csetjmp>
#include <cstring>

#include "tiue/error.hpp"
#include "tiue/tensor.hpp"

namespace tiue {

namespace {

struct Buffer {
  std::string bytes;
  char error[256] = {0};
};

void on_write(png_structp png, png_bytep data, png_size_t n) {
  static_cast<Buffer*>(png_get_io_ptr(png))->bytes.append(reinterpret_cast<const char*>(data), n);
}

void on_flush(png_structp) {}

void on_error(png_structp png, png_const_charp message) {
  auto* buf = static_cast<Buffer*>(png_get_error_ptr(png));
  std::strncpy(buf->error, message ? message : "libpng error", sizeof(buf->error) - 1);
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

/// Encode into buf->bytes; false (and buf->error) when libpng failed. Holds no C++ object with a
/// destructor between setjmp and a longjmp out of libpng.
bool encode(Buffer* buf, const uint8_t* hwc, png_uint_32 height, png_uint_32 width, png_text* text, int num_text) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, buf, on_error, on_warning);
  if (!png) {
    std::strncpy(buf->error, "libpng cannot start", sizeof(buf->error) - 1);
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, info ? &info : nullptr);
    if (!buf->error[0]) std::strncpy(buf->error, "libpng cannot start", sizeof(buf->error) - 1);
    return false;
  }
  png_set_write_fn(png, buf, on_write, on_flush);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (num_text > 0) png_set_text(png, info, text, num_text);
  png_write_info(png, info);
  for (png_uint_32 y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(hwc + static_cast<std::size_t>(y) * width * 3));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const std::filesystem::path& path, const uint8_t* hwc, int64_t height, int64_t width, const PngText& text) {
  if (height < 1 || width < 1 || height > 0x7fffffff || width > 0x7fffffff)
    throw InputError("cannot write a " + std::to_string(height) + "x" + std::to_string(width) + " PNG");
  std::vector<std::string> keys, values;
  for (const auto& [key, value] : text) {
    const bool ok = !key.empty() && key.size() <= 79 && key.find('\0') == std::string::npos;
    if (!ok) throw InputError("PNG text keyword '" + key + "' must be 1-79 characters");
    keys.push_back(key);
    values.push_back(value);
  }
  std::vector<png_text> chunks(text.size());
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    std::memset(&chunks[i], 0, sizeof(png_text));
    chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = keys[i].data();
    chunks[i].text = values[i].data();
    chunks[i].itxt_length = values[i].size();
    chunks[i].lang = const_cast<char*>("");
    chunks[i].lang_key = const_cast<char*>("");
  }
  Buffer buf;
  if (!encode(&buf, hwc, static_cast<png_uint_32>(height), static_cast<png_uint_32>(width), chunks.data(), static_cast<int>(chunks.size())))
    throw Error(path.string() + ": libpng failed: " + buf.error);
  atomic_write(path, [&](std::ostream& out) { out.write(buf.bytes.data(), static_cast<std::streamsize>(buf.bytes.size())); });
}

}  // namespace tiue
