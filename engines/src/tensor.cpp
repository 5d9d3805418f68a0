#include "tiue/tensor.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <system_error>

#include "tiue/error.hpp"

namespace tiue {

namespace fs = std::filesystem;

const char* dtype_name(DType dtype) { return dtype == DType::Float32 ? "float32" : "int64"; }

DType dtype_from_name(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "int64") return DType::Int64;
  throw InputError("unsupported tensor dtype '" + name + "' at a graph boundary: this runtime reads float32 and int64");
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  const auto n = static_cast<std::size_t>(numel(shape));
  if (dtype == DType::Float32) return Tensor{std::move(shape), std::vector<float>(n, 0.0f)};
  return Tensor{std::move(shape), std::vector<int64_t>(n, 0)};
}

Tensor Tensor::of(Shape shape, std::vector<float> values) {
  if (static_cast<int64_t>(values.size()) != numel(shape)) throw Error("Tensor::of: values do not fill " + shape_str(shape));
  return Tensor{std::move(shape), std::move(values)};
}

Tensor Tensor::of(Shape shape, std::vector<int64_t> values) {
  if (static_cast<int64_t>(values.size()) != numel(shape)) throw Error("Tensor::of: values do not fill " + shape_str(shape));
  return Tensor{std::move(shape), std::move(values)};
}

namespace {

template <typename T>
T* elements(std::variant<std::vector<float>, std::vector<int64_t>>& data, DType have, DType want) {
  auto* v = std::get_if<std::vector<T>>(&data);
  if (!v) throw Error(std::string("tensor holds ") + dtype_name(have) + ", " + dtype_name(want) + " was expected");
  return v->data();
}

}  // namespace

float* Tensor::f32() { return elements<float>(data, dtype(), DType::Float32); }
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }
int64_t* Tensor::i64() { return elements<int64_t>(data, dtype(), DType::Int64); }
const int64_t* Tensor::i64() const { return const_cast<Tensor*>(this)->i64(); }

std::size_t Tensor::nbytes() const {
  return std::visit([](const auto& v) { return v.size() * sizeof(v[0]); }, data);
}

void* Tensor::raw() {
  return std::visit([](auto& v) { return static_cast<void*>(v.data()); }, data);
}

const void* Tensor::raw() const {
  return std::visit([](const auto& v) { return static_cast<const void*>(v.data()); }, data);
}

// -- .npy ---------------------------------------------------------------------------------------
namespace {

const char kMagic[] = "\x93NUMPY";

std::string header_field(const std::string& header, const std::string& key, const fs::path& path) {
  // The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }
  const std::regex re("'" + key + "'\\s*:\\s*('[^']*'|True|False|\\([^)]*\\))");
  std::smatch m;
  if (!std::regex_search(header, m, re)) throw InputError(path.string() + ": not a .npy file (no '" + key + "' in its header)");
  return m[1];
}

Shape parse_shape(const std::string& tuple, const fs::path& path) {
  Shape shape;
  std::string inner = tuple.substr(1, tuple.size() - 2);
  std::stringstream ss(inner);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(' ');
    if (b == std::string::npos) continue;
    try {
      shape.push_back(std::stoll(item.substr(b)));
    } catch (const std::exception&) {
      throw InputError(path.string() + ": bad shape " + tuple + " in its .npy header");
    }
  }
  return shape;
}

template <typename From, typename To>
std::vector<To> read_converted(std::istream& in, std::size_t n) {
  std::vector<From> raw(n);
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(n * sizeof(From)));
  return std::vector<To>(raw.begin(), raw.end());
}

}  // namespace

Tensor read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open (no such file?)");
  char magic[6];
  in.read(magic, 6);
  if (!in || std::memcmp(magic, kMagic, 6) != 0) throw InputError(path.string() + ": not a .npy file (bad magic)");
  unsigned char version[2];
  in.read(reinterpret_cast<char*>(version), 2);
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(len_bytes), version[0] == 1 ? 2 : 4);
  for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (!in || header_len > (1u << 20)) throw InputError(path.string() + ": not a .npy file (bad header length)");
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) throw InputError(path.string() + ": truncated .npy header");

  const std::string descr = header_field(header, "descr", path);
  if (header_field(header, "fortran_order", path) != "False")
    throw InputError(path.string() + ": Fortran-order arrays are not supported: save np.ascontiguousarray(x)");
  Shape shape = parse_shape(header_field(header, "shape", path), path);
  if (descr != "'<f4'" && descr != "'<f8'" && descr != "'<i8'" && descr != "'<i4'")
    throw InputError(path.string() + ": unsupported .npy dtype " + descr + ": use float32 or int64");
  // The header is untrusted: a negative or huge shape must be refused, not allocated.
  const std::size_t item = descr == "'<f8'" || descr == "'<i8'" ? 8 : 4;
  const auto data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const auto file_size = in.tellg();
  in.seekg(data_start);
  const auto available = static_cast<uint64_t>(file_size - data_start) / item;
  uint64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InputError(path.string() + ": its .npy header claims a negative shape " + shape_str(shape));
    if (d != 0 && count > available / static_cast<uint64_t>(d))
      count = available + 1;  // more than the file holds (and no overflow)
    else
      count *= static_cast<uint64_t>(d);
  }
  if (count > available)
    throw InputError(path.string() + ": its .npy header claims shape " + shape_str(shape) + " but the file holds " + std::to_string(available) +
                     " elements (truncated or damaged)");
  const auto n = static_cast<std::size_t>(count);

  Tensor t;
  t.shape = shape;
  if (descr == "'<f4'") {
    t.data = read_converted<float, float>(in, n);
  } else if (descr == "'<f8'") {
    t.data = read_converted<double, float>(in, n);
  } else if (descr == "'<i8'") {
    t.data = read_converted<int64_t, int64_t>(in, n);
  } else {  // '<i4'
    t.data = read_converted<int32_t, int64_t>(in, n);
  }
  if (!in) throw InputError(path.string() + ": truncated .npy data (expected " + std::to_string(n) + " elements)");
  return t;
}

void atomic_write(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp");
  {
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(path.string() + ": cannot write here: " + (errno ? std::strerror(errno) : "cannot create a file"));
    try {
      write(out);
    } catch (...) {
      out.close();
      std::error_code ec;
      fs::remove(tmp, ec);
      throw;
    }
    errno = 0;
    out.flush();
    out.close();
    if (!out) {
      const std::string why = errno ? std::strerror(errno) : "the stream failed";
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw Error(path.string() + ": write failed: " + why);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;  // the rename's reason is what the user needs, not the cleanup's
    fs::remove(tmp, ignored);
    throw Error(path.string() + ": cannot replace: " + ec.message());
  }
}

void write_npy(const fs::path& path, const Tensor& tensor) {
  std::string shape = "(";
  for (auto d : tensor.shape) shape += std::to_string(d) + ", ";
  if (tensor.shape.size() > 1) shape.resize(shape.size() - 2);
  else if (tensor.shape.size() == 1) shape.resize(shape.size() - 1);  // "(3,)"
  shape += ")";
  const char* descr = tensor.dtype() == DType::Float32 ? "<f4" : "<i8";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64 bytes.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  atomic_write(path, [&](std::ostream& out) {
    out.write(kMagic, 6);
    const char version[2] = {1, 0};
    out.write(version, 2);
    const auto len = static_cast<uint16_t>(header.size());
    const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    out.write(len_bytes, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(tensor.raw()), static_cast<std::streamsize>(tensor.nbytes()));
  });
}

Tensor read_token_ids(const fs::path& path) {
  if (path.extension() == ".npy") {
    Tensor t = read_npy(path);
    if (t.dtype() != DType::Int64 || t.shape.size() != 2)
      throw InputError(path.string() + ": token ids must be an integer array of shape (B, L), got " +
                       dtype_name(t.dtype()) + " " + shape_str(t.shape));
    return t;
  }
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open (no such file?)");
  std::vector<int64_t> ids;
  int64_t rows = 0, cols = -1;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::stringstream ss(line);
    int64_t n = 0, v = 0;
    while (ss >> v) {
      ids.push_back(v);
      ++n;
    }
    if (!ss.eof()) throw InputError(path.string() + ": line " + std::to_string(rows + 1) + " is not whitespace-separated integers");
    if (cols >= 0 && n != cols)
      throw InputError(path.string() + ": line " + std::to_string(rows + 1) + " has " + std::to_string(n) + " ids, line 1 has " + std::to_string(cols));
    cols = n;
    ++rows;
  }
  if (rows == 0) throw InputError(path.string() + ": no token ids in the file");
  return Tensor::of({rows, cols}, std::move(ids));
}

}  // namespace tiue
