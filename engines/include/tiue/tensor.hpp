// Host tensors (float32 or int64, C order) and .npy files, the format the Python side writes
// token ids, z_T and latents in.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

namespace tiue {

/// The dtypes at a bundle graph's boundary (fp16 bundles keep float32 inputs and outputs).
enum class DType { Float32, Int64 };

/// "float32" / "int64": the manifest's spelling.
const char* dtype_name(DType dtype);
/// The manifest's spelling to a DType; throws InputError for any other (e.g. "float16").
DType dtype_from_name(const std::string& name);

using Shape = std::vector<int64_t>;

/// "[1, 4, 64, 64]".
std::string shape_str(const Shape& shape);
/// Number of elements of a shape (1 for a scalar).
int64_t numel(const Shape& shape);

/// A contiguous C-order host array.
struct Tensor {
  Shape shape;
  std::variant<std::vector<float>, std::vector<int64_t>> data;

  /// Zero-filled tensor of `dtype` and `shape`.
  static Tensor zeros(DType dtype, Shape shape);
  static Tensor of(Shape shape, std::vector<float> values);
  static Tensor of(Shape shape, std::vector<int64_t> values);

  DType dtype() const { return data.index() == 0 ? DType::Float32 : DType::Int64; }
  int64_t size() const { return numel(shape); }
  std::size_t nbytes() const;
  void* raw();
  const void* raw() const;

  /// The elements; throws Error (not std::bad_variant_access) when the dtype differs.
  float* f32();
  const float* f32() const;
  int64_t* i64();
  const int64_t* i64() const;
};

/// Named tensors: a graph's feed or outputs.
using TensorMap = std::map<std::string, Tensor>;

/// Read a .npy file (little-endian float32/float64 -> Float32, int64/int32 -> Int64, C order).
/// Throws InputError naming the file for anything else.
Tensor read_npy(const std::filesystem::path& path);
/// Write a .npy file (format 1.0) atomically: a temporary file beside it, then a rename.
void write_npy(const std::filesystem::path& path, const Tensor& tensor);

/// Token ids from a .npy file (B, L) or a text file with one prompt's ids per line.
Tensor read_token_ids(const std::filesystem::path& path);

/// Write a file atomically: `write` fills a stream on a temporary file that is renamed to `path`
/// only when it returned and the stream is good; nothing half-written is ever left at `path`.
/// Throws InputError when the directory cannot be written, Error when writing or renaming fails
/// (the message carries the system's reason).
void atomic_write(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);

}  // namespace tiue
