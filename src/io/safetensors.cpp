// safetensors reader and writer (format and validation rules: include/sqa/safetensors.hpp).
#include "sqa/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "sqa/error.hpp"
#include "sqa/io.hpp"

namespace sqa {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swaps");

namespace {

// The reference implementation refuses headers above 100 MB: a corrupt length field must not
// make us allocate or parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  TensorDType dtype;
  const char* name;
  int size;
};
constexpr DTypeInfo kDTypes[] = {
    {TensorDType::f64, "F64", 8},      {TensorDType::f32, "F32", 4}, {TensorDType::f16, "F16", 2},
    {TensorDType::bf16, "BF16", 2},    {TensorDType::i64, "I64", 8}, {TensorDType::i32, "I32", 4},
    {TensorDType::i16, "I16", 2},      {TensorDType::i8, "I8", 1},   {TensorDType::u8, "U8", 1},
    {TensorDType::boolean, "BOOL", 1},
};

const DTypeInfo& info(TensorDType dtype) {
  for (const DTypeInfo& entry : kDTypes)
    if (entry.dtype == dtype) return entry;
  throw Error("invalid TensorDType value");
}

bool is_float(TensorDType dtype) {
  return dtype == TensorDType::f64 || dtype == TensorDType::f32 || dtype == TensorDType::f16 ||
         dtype == TensorDType::bf16;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// numel with overflow detection; false when the product does not fit in uint64.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t& numel) {
  numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    const auto d = static_cast<uint64_t>(dim);
    if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d) return false;
    numel *= d;
  }
  return true;
}

template <typename T>
T load_le(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

}  // namespace

std::string_view tensor_dtype_name(TensorDType dtype) {
  return info(dtype).name;
}

TensorDType parse_tensor_dtype(std::string_view name) {
  for (const DTypeInfo& entry : kDTypes)
    if (name == entry.name) return entry.dtype;
  throw Error(detail::concat("unknown safetensors dtype '", name,
                             "': expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, "
                             "BOOL"));
}

int tensor_dtype_size(TensorDType dtype) {
  return info(dtype).size;
}

TensorDType to_tensor_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return TensorDType::f32;
    case DType::bf16:
      return TensorDType::bf16;
    case DType::f16:
      return TensorDType::f16;
    case DType::f64:
      return TensorDType::f64;
  }
  throw Error("invalid DType value");
}

DType to_dtype(TensorDType dtype) {
  switch (dtype) {
    case TensorDType::f32:
      return DType::f32;
    case TensorDType::bf16:
      return DType::bf16;
    case TensorDType::f16:
      return DType::f16;
    case TensorDType::f64:
      return DType::f64;
    default:
      break;
  }
  throw Error(
      detail::concat("safetensors dtype ", tensor_dtype_name(dtype), " has no floating sqa dtype"));
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float f16_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t wide;
  if (exponent == 0x1f) {
    wide = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN
  } else if (exponent != 0) {
    wide = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    wide = sign;
  } else {
    // Subnormal half: normalise into a float exponent.
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    wide = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(wide);
}

uint16_t float_to_f16(float value) {
  const uint32_t wide = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((wide >> 16) & 0x8000u);
  const uint32_t abs = wide & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN stays quiet
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Below the smallest normal half (2^-14): subnormal, value / 2^-24 rounded to even.
    const float magnitude = std::bit_cast<float>(abs);
    const float scaled = magnitude * 16777216.0f;  // exact: power of two
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  // Normal: drop 13 mantissa bits with round to nearest even, rebias 127 -> 15.
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void TensorView::copy_to_f32(float* out) const {
  require(is_float(dtype), "tensor '", name, "' has dtype ", tensor_dtype_name(dtype),
          ": a float dtype (F32, BF16, F16, F64) is needed");
  const int64_t n = numel();
  switch (dtype) {
    case TensorDType::f32:
      std::memcpy(out, data, static_cast<size_t>(n) * 4);
      break;
    case TensorDType::bf16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(bf16{load_le<uint16_t>(data + 2 * i)});
      break;
    case TensorDType::f16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_float(load_le<uint16_t>(data + 2 * i));
      break;
    case TensorDType::f64:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(load_le<double>(data + 8 * i));
      break;
    default:
      break;
  }
}

std::vector<float> TensorView::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  copy_to_f32(out.data());
  return out;
}

std::vector<int64_t> TensorView::to_i64() const {
  require(!is_float(dtype), "tensor '", name, "' has dtype ", tensor_dtype_name(dtype),
          ": an integer dtype is needed");
  const int64_t n = numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case TensorDType::i64:
        out[i] = load_le<int64_t>(data + 8 * i);
        break;
      case TensorDType::i32:
        out[i] = load_le<int32_t>(data + 4 * i);
        break;
      case TensorDType::i16:
        out[i] = load_le<int16_t>(data + 2 * i);
        break;
      case TensorDType::i8:
        out[i] = static_cast<int8_t>(data[i]);
        break;
      case TensorDType::u8:
      case TensorDType::boolean:
        out[i] = data[i];
        break;
      default:
        break;
    }
  }
  return out;
}

SafeTensorsFile SafeTensorsFile::load(const std::string& path) {
  return parse(read_file(path), path);
}

SafeTensorsFile SafeTensorsFile::parse(std::string bytes, const std::string& origin) {
  using nlohmann::json;
  const std::string where = "safetensors file '" + origin + "'";
  const uint64_t file_size = bytes.size();
  require(file_size >= 8, where, ": ", file_size,
          " bytes is too short for the 8-byte header length (truncated file?)");
  const auto header_len = load_le<uint64_t>(reinterpret_cast<const uint8_t*>(bytes.data()));
  require(header_len <= kMaxHeaderBytes, where, ": header length ", header_len,
          " exceeds the limit of ", kMaxHeaderBytes, " bytes (corrupt file?)");
  require(header_len <= file_size - 8, where, ": header length ", header_len,
          " runs past the end of the file (", file_size, " bytes; truncated file?)");
  require(header_len >= 2 && bytes[8] == '{', where,
          ": the header must be a JSON object starting with '{' (corrupt file?)");

  // Duplicate tensor names are legal JSON but ambiguous; catch them while parsing.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      if (!seen.insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(header_len),
                         on_event);
  } catch (const json::exception& e) {
    throw Error(detail::concat(where, ": the header is not valid JSON (", e.what(), ")"));
  }
  require(header.is_object(), where, ": the header must be a JSON object");
  require(duplicate.empty(), where, ": tensor name '", duplicate, "' appears twice");

  SafeTensorsFile file;
  file.origin_ = origin;
  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = file_size - data_begin;
  struct Span {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      require(entry.is_object(), where, ": __metadata__ must be an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        require(m.value().is_string(), where, ": __metadata__ value for key '", m.key(),
                "' must be a string, got ", m.value().dump());
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tensor = where + ": tensor '" + name + "'";
    require(entry.is_object(), tensor, ": entry must be an object, got ", entry.dump());
    for (auto field = entry.begin(); field != entry.end(); ++field) {
      require(field.key() == "dtype" || field.key() == "shape" || field.key() == "data_offsets",
              tensor, ": unknown field '", field.key(), "' (allowed: dtype, shape, data_offsets)");
    }
    require(entry.contains("dtype") && entry["dtype"].is_string(), tensor,
            ": 'dtype' must be a string");
    TensorView view;
    view.name = name;
    try {
      view.dtype = parse_tensor_dtype(entry["dtype"].get<std::string>());
    } catch (const Error& e) {
      throw Error(tensor + ": " + e.what());
    }
    require(entry.contains("shape") && entry["shape"].is_array(), tensor,
            ": 'shape' must be an array of non-negative integers");
    for (const json& dim : entry["shape"]) {
      require(dim.is_number_unsigned() || (dim.is_number_integer() && dim.get<int64_t>() >= 0),
              tensor, ": shape entry ", dim.dump(), " must be a non-negative integer");
      require(dim.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              tensor, ": shape entry ", dim.dump(), " is too large");
      view.shape.push_back(dim.get<int64_t>());
    }
    require(entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
                entry["data_offsets"].size() == 2,
            tensor, ": 'data_offsets' must be an array [begin, end]");
    for (const json& offset : entry["data_offsets"]) {
      require(
          offset.is_number_unsigned() || (offset.is_number_integer() && offset.get<int64_t>() >= 0),
          tensor, ": data offset ", offset.dump(), " must be a non-negative integer");
    }
    const auto begin = entry["data_offsets"][0].get<uint64_t>();
    const auto end = entry["data_offsets"][1].get<uint64_t>();
    require(begin <= end, tensor, ": data_offsets [", begin, ", ", end, "] must have begin <= end");
    require(end <= data_size, tensor, ": data_offsets end ", end,
            " is past the end of the data block (", data_size, " bytes; truncated file?)");
    uint64_t numel = 0;
    require(checked_numel(view.shape, numel) && numel <= std::numeric_limits<uint64_t>::max() / 8,
            tensor, ": shape ", shape_text(view.shape), " overflows");
    const uint64_t expected = numel * static_cast<uint64_t>(tensor_dtype_size(view.dtype));
    require(expected == end - begin, tensor, ": shape ", shape_text(view.shape), " of ",
            tensor_dtype_name(view.dtype), " needs ", expected, " bytes but data_offsets [", begin,
            ", ", end, "] span ", end - begin);
    view.nbytes = static_cast<size_t>(end - begin);
    spans.push_back({begin, end, file.tensors_.size()});
    file.tensors_.push_back(std::move(view));
  }

  // The data block must be tiled exactly: sorted spans, each starting where the last ended.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const Span& span : spans) {
    const std::string& name = file.tensors_[span.tensor].name;
    require(span.begin >= cursor, where, ": tensor '", name, "' data_offsets [", span.begin, ", ",
            span.end, "] overlap the previous tensor, which ends at ", cursor);
    require(span.begin == cursor, where, ": tensor '", name, "' data_offsets [", span.begin, ", ",
            span.end, "] leave a hole after offset ", cursor,
            " (tensors must tile the data block)");
    cursor = span.end;
  }
  require(cursor == data_size, where, ": the data block has ", data_size,
          " bytes but the tensors cover ", cursor, " (trailing bytes: corrupt file?)");

  // Reorder tensors by offset and point them into the owned bytes.
  std::vector<TensorView> ordered;
  ordered.reserve(spans.size());
  for (const Span& span : spans) ordered.push_back(std::move(file.tensors_[span.tensor]));
  file.bytes_ = std::move(bytes);
  const auto* base = reinterpret_cast<const uint8_t*>(file.bytes_.data()) + data_begin;
  for (size_t i = 0; i < ordered.size(); ++i) {
    ordered[i].data = base + spans[i].begin;
    file.index_[ordered[i].name] = i;
  }
  file.tensors_ = std::move(ordered);
  return file;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (const TensorView& view : tensors_) out.push_back(view.name);
  return out;
}

bool SafeTensorsFile::contains(const std::string& name) const {
  return index_.count(name) != 0;
}

const TensorView& SafeTensorsFile::at(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    std::string known;
    for (size_t i = 0; i < tensors_.size() && i < 8; ++i)
      known += (i ? ", " : "") + tensors_[i].name;
    if (tensors_.size() > 8) known += ", ...";
    throw Error(detail::concat("safetensors file '", origin_, "' has no tensor '", name, "' (",
                               tensors_.size(), " tensors: ", known, ")"));
  }
  return tensors_[it->second];
}

const TensorView& SafeTensorsFile::at(const std::string& name,
                                      const std::vector<int64_t>& expected_shape) const {
  const TensorView& view = at(name);
  require(view.shape == expected_shape, "safetensors file '", origin_, "': tensor '", name,
          "' has shape ", shape_text(view.shape), " but ", shape_text(expected_shape),
          " is expected");
  return view;
}

void SafeTensorsWriter::add(const std::string& name, TensorDType dtype,
                            const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  require(!name.empty() && name != "__metadata__", "safetensors tensor name '", name,
          "' is reserved or empty");
  for (const Entry& entry : entries_)
    require(entry.name != name, "safetensors tensor '", name, "' is added twice");
  uint64_t numel = 0;
  require(checked_numel(shape, numel), "safetensors tensor '", name, "': shape ", shape_text(shape),
          " must have non-negative entries without overflow");
  require(numel * static_cast<uint64_t>(tensor_dtype_size(dtype)) == nbytes, "safetensors tensor '",
          name, "': shape ", shape_text(shape), " of ", tensor_dtype_name(dtype), " needs ",
          numel * tensor_dtype_size(dtype), " bytes, got ", nbytes);
  Entry entry{name, dtype, shape, std::string(static_cast<const char*>(data), nbytes)};
  entries_.push_back(std::move(entry));
}

void SafeTensorsWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape,
                                std::span<const float> values, TensorDType dtype) {
  require(is_float(dtype), "safetensors tensor '", name, "': add_f32 stores a float dtype, not ",
          tensor_dtype_name(dtype));
  const size_t n = values.size();
  std::string bytes(n * static_cast<size_t>(tensor_dtype_size(dtype)), '\0');
  char* out = bytes.data();
  for (size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case TensorDType::f32:
        std::memcpy(out + 4 * i, &values[i], 4);
        break;
      case TensorDType::bf16: {
        const uint16_t bits = float_to_bf16(values[i]).bits;
        std::memcpy(out + 2 * i, &bits, 2);
        break;
      }
      case TensorDType::f16: {
        const uint16_t bits = float_to_f16(values[i]);
        std::memcpy(out + 2 * i, &bits, 2);
        break;
      }
      case TensorDType::f64: {
        const double wide = values[i];
        std::memcpy(out + 8 * i, &wide, 8);
        break;
      }
      default:
        break;
    }
  }
  add(name, dtype, shape, bytes.data(), bytes.size());
}

void SafeTensorsWriter::add_i64(const std::string& name, const std::vector<int64_t>& shape,
                                std::span<const int64_t> values) {
  add(name, TensorDType::i64, shape, values.data(), values.size_bytes());
}

void SafeTensorsWriter::add_i32(const std::string& name, const std::vector<int64_t>& shape,
                                std::span<const int32_t> values) {
  add(name, TensorDType::i32, shape, values.data(), values.size_bytes());
}

void SafeTensorsWriter::add_u8(const std::string& name, const std::vector<int64_t>& shape,
                               std::span<const uint8_t> values) {
  add(name, TensorDType::u8, shape, values.data(), values.size_bytes());
}

void SafeTensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

std::string SafeTensorsWriter::serialize() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata_) meta[key] = value;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const Entry& entry : entries_) {
    nlohmann::ordered_json item;
    item["dtype"] = std::string(tensor_dtype_name(entry.dtype));
    item["shape"] = entry.shape;
    item["data_offsets"] = {offset, offset + entry.bytes.size()};
    header[entry.name] = item;
    offset += entry.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data block 8-byte aligned
  const uint64_t header_len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_len, 8);
  out.reserve(8 + header_len + offset);
  out += text;
  for (const Entry& entry : entries_) out += entry.bytes;
  return out;
}

void SafeTensorsWriter::save(const std::string& path) const {
  write_file_atomic(path, serialize());
}

}  // namespace sqa
