// The safetensors file format (https://github.com/huggingface/safetensors), read and written
// here without the Rust library:
//
//   [8 bytes]  N, the header length, unsigned little-endian
//   [N bytes]  JSON object: "<tensor name>": {"dtype": "F32", "shape": [d0, d1, ...],
//              "data_offsets": [begin, end]} for each tensor, plus an optional
//              "__metadata__": {"key": "string value", ...}
//   [rest]     raw little-endian tensor data; offsets are relative to the start of this block
//
// Reading validates everything before any tensor is handed out: header length against the file
// size, JSON syntax, known dtype, shape entries >= 0, offsets in range, ordered and
// non-overlapping (and covering the data block without holes), and numel * dtype size equal to
// the byte span. Each error names the file, the tensor, the value and the rule, so a truncated
// or corrupted checkpoint fails with a message instead of garbage weights.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sqa/dtype.hpp"

namespace sqa {

// safetensors element types. Names are the format's strings ("F32", "BF16", ...).
enum class TensorDType { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

std::string_view tensor_dtype_name(TensorDType dtype);  // "F32"
// Parses a format name ("F32"); throws sqa::Error naming the value and the valid names.
TensorDType parse_tensor_dtype(std::string_view name);
int tensor_dtype_size(TensorDType dtype);  // bytes per element
// The floating sqa::DType for a safetensors float dtype and back (throws for integer types).
TensorDType to_tensor_dtype(DType dtype);
DType to_dtype(TensorDType dtype);

// One tensor of a loaded file. `data` points into the owning SafeTensorsFile.
struct TensorView {
  std::string name;
  TensorDType dtype = TensorDType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // Elements converted to float from F32, BF16, F16 or F64 (throws for integer dtypes).
  std::vector<float> to_f32() const;
  // Copies into `out` (numel floats) with the same conversion.
  void copy_to_f32(float* out) const;
  // Elements converted to int64 from any integer dtype (throws for float dtypes).
  std::vector<int64_t> to_i64() const;
};

// A whole file in memory, validated on load.
class SafeTensorsFile {
 public:
  // Reads and validates `path`; throws sqa::Error naming the path, tensor and rule broken.
  static SafeTensorsFile load(const std::string& path);
  // Validates an in-memory file; `origin` names it in errors.
  static SafeTensorsFile parse(std::string bytes, const std::string& origin = "safetensors");

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensors in file (data offset) order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // Throws sqa::Error naming the tensor and the file when absent.
  const TensorView& at(const std::string& name) const;
  // at(name), plus a check of dtype-independent shape; throws naming expected and found shape.
  const TensorView& at(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  std::string bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
};

// Builds a file tensor by tensor; data is copied in add(), so callers may reuse buffers.
class SafeTensorsWriter {
 public:
  // Raw bytes already in `dtype`'s little-endian layout; nbytes must equal numel * size.
  void add(const std::string& name, TensorDType dtype, const std::vector<int64_t>& shape,
           const void* data, size_t nbytes);
  // Floats stored as `dtype` (F32, BF16 round-to-nearest-even, F16, F64).
  void add_f32(const std::string& name, const std::vector<int64_t>& shape,
               std::span<const float> values, TensorDType dtype = TensorDType::f32);
  void add_i64(const std::string& name, const std::vector<int64_t>& shape,
               std::span<const int64_t> values);
  void add_i32(const std::string& name, const std::vector<int64_t>& shape,
               std::span<const int32_t> values);
  void add_u8(const std::string& name, const std::vector<int64_t>& shape,
              std::span<const uint8_t> values);
  void set_metadata(const std::string& key, const std::string& value);

  // The file's bytes: tensors in insertion order, header padded with spaces to 8 bytes so the
  // data block stays aligned (as the reference implementation does).
  std::string serialize() const;
  // serialize() written with write_file_atomic.
  void save(const std::string& path) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    TensorDType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// IEEE half precision conversions (round to nearest even), used for F16 tensors.
float f16_to_float(uint16_t bits);
uint16_t float_to_f16(float value);

}  // namespace sqa
