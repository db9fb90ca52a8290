// Element types. bf16 is stored as its raw 16 bits; arithmetic always happens in fp32 (or fp64
// in the reference).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace sqa {

enum class DType { f32, bf16, f16, f64 };

std::string_view dtype_name(DType dtype);
DType parse_dtype(std::string_view name);  // throws sqa::Error naming the valid choices
int dtype_size(DType dtype);

struct bf16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 x) {
  const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

// Round to nearest even, NaN kept quiet.
inline bf16 float_to_bf16(float x) {
  uint32_t wide;
  std::memcpy(&wide, &x, sizeof(wide));
  if ((wide & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((wide >> 16) | 0x40)};
  const uint32_t rounding = 0x7fffu + ((wide >> 16) & 1u);
  return bf16{static_cast<uint16_t>((wide + rounding) >> 16)};
}

}  // namespace sqa
