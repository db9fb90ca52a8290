// safetensors: round trips for every dtype, exact F16 conversion, and that every truncation and
// each kind of corrupt header gives an sqa::Error that names the tensor, value and rule.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "data/data_test_util.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/safetensors.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

using test::error_of;
using test::expect_error;
using test::ScratchDir;

// A file from a raw header JSON and data block.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::vector<float> random_floats(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

TEST(SafeTensors, RoundTripEveryDType) {
  std::mt19937_64 rng(21);
  const std::vector<TensorDType> dtypes = {TensorDType::f64,    TensorDType::f32, TensorDType::f16,
                                           TensorDType::bf16,   TensorDType::i64, TensorDType::i32,
                                           TensorDType::i16,    TensorDType::i8,  TensorDType::u8,
                                           TensorDType::boolean};
  const std::vector<std::vector<int64_t>> shapes = {{},     {0},       {1},      {7},
                                                    {3, 5}, {2, 0, 4}, {2, 3, 4}};
  SafeTensorsWriter writer;
  std::map<std::string, std::string> expected_bytes;
  std::map<std::string, std::pair<TensorDType, std::vector<int64_t>>> expected_meta;
  int index = 0;
  for (TensorDType dtype : dtypes) {
    for (const auto& shape : shapes) {
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      std::string bytes = test::random_bytes(
          rng, static_cast<size_t>(numel) * static_cast<size_t>(tensor_dtype_size(dtype)));
      if (dtype == TensorDType::boolean)
        for (char& c : bytes) c = static_cast<char>(c & 1);
      const std::string name = "layers." + std::to_string(index++) + ".w";
      writer.add(name, dtype, shape, bytes.data(), bytes.size());
      expected_bytes[name] = bytes;
      expected_meta[name] = {dtype, shape};
    }
  }
  writer.set_metadata("format", "pt");
  writer.set_metadata("note", "unicode ✓ and \"quotes\"");
  const std::string serialized = writer.serialize();
  uint64_t header_len;
  std::memcpy(&header_len, serialized.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data block not 8-byte aligned";

  const SafeTensorsFile file = SafeTensorsFile::parse(serialized, "mem");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "unicode ✓ and \"quotes\"");
  ASSERT_EQ(file.tensors().size(), expected_bytes.size());
  for (const auto& [name, bytes] : expected_bytes) {
    const TensorView& view = file.at(name);
    EXPECT_EQ(view.dtype, expected_meta[name].first) << name;
    EXPECT_EQ(view.shape, expected_meta[name].second) << name;
    ASSERT_EQ(view.nbytes, bytes.size()) << name;
    EXPECT_EQ(std::memcmp(view.data, bytes.data(), bytes.size()), 0) << name;
  }
  // Writing what we read gives the same bytes (tensor order and header are stable).
  SafeTensorsWriter again;
  for (const auto& [k, v] : file.metadata()) again.set_metadata(k, v);
  for (const TensorView& view : file.tensors())
    again.add(view.name, view.dtype, view.shape, view.data, view.nbytes);
  EXPECT_EQ(again.serialize(), serialized);
}

TEST(SafeTensors, FloatConversionsOnWriteAndRead) {
  std::mt19937_64 rng(22);
  const std::vector<float> values = random_floats(rng, 1000);
  SafeTensorsWriter writer;
  writer.add_f32("f32", {10, 100}, values, TensorDType::f32);
  writer.add_f32("f64", {1000}, values, TensorDType::f64);
  writer.add_f32("bf16", {1000}, values, TensorDType::bf16);
  writer.add_f32("f16", {1000}, values, TensorDType::f16);
  std::vector<int64_t> ints(50);
  for (auto& v : ints) v = static_cast<int64_t>(rng()) >> 20;
  writer.add_i64("ints", {50}, ints);
  const SafeTensorsFile file = SafeTensorsFile::parse(writer.serialize());
  EXPECT_EQ(file.at("f32", {10, 100}).to_f32(), values);
  EXPECT_EQ(file.at("f64").to_f32(), values);
  const auto bf = file.at("bf16").to_f32();
  const auto half = file.at("f16").to_f32();
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(bf[i], bf16_to_float(float_to_bf16(values[i])));
    EXPECT_LE(std::abs(bf[i] - values[i]), std::abs(values[i]) * (1.0f / 256)) << i;
    EXPECT_LE(std::abs(half[i] - values[i]), std::max(std::abs(values[i]) * (1.0f / 2048), 6e-8f))
        << i;
  }
  EXPECT_EQ(file.at("ints").to_i64(), ints);
  expect_error([&] { (void)file.at("ints").to_f32(); }, {"ints", "I64", "float"});
  expect_error([&] { (void)file.at("f32").to_i64(); }, {"f32", "integer"});
  expect_error([&] { (void)file.at("f32", {100, 10}); }, {"f32", "[10, 100]", "[100, 10]"});
  expect_error([&] { (void)file.at("nope"); }, {"nope", "5 tensors"});
}

// Every half-precision bit pattern survives f16 -> float -> f16, and rounding to f16 picks the
// nearest representable value (ties to even), checked in double precision.
TEST(SafeTensors, HalfPrecisionExact) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = f16_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(x))));
      continue;
    }
    ASSERT_EQ(float_to_f16(x), bits) << "bits " << bits << " value " << x;
  }
  // Sorted positive finite halves for the nearest-value check.
  std::vector<double> grid;
  for (uint32_t bits = 0; bits < 0x7c00; ++bits)
    grid.push_back(f16_to_float(static_cast<uint16_t>(bits)));
  std::mt19937_64 rng(23);
  const int samples = test::small_scale() ? 20000 : 200000;
  for (int i = 0; i < samples; ++i) {
    // Magnitudes across the subnormal, normal and overflow ranges.
    const float x = std::ldexp(std::uniform_real_distribution<float>(1.0f, 2.0f)(rng),
                               static_cast<int>(rng() % 48) - 30);
    const uint16_t h = float_to_f16(x);
    if (x >= 65520.0f) {
      EXPECT_EQ(h, 0x7c00) << x;  // rounds to infinity
      continue;
    }
    const auto it = std::lower_bound(grid.begin(), grid.end(), static_cast<double>(x));
    const double above = it == grid.end() ? INFINITY : *it;
    const double below = it == grid.begin() ? 0.0 : *(it - 1);
    const double got = f16_to_float(h);
    const double best = (x - below) < (above - x) ? below : above;
    if ((x - below) != (above - x)) {
      ASSERT_EQ(got, best) << "x " << x;
    } else {
      ASSERT_TRUE(got == below || got == above) << "x " << x;
      ASSERT_EQ(h & 1, 0) << "tie not rounded to even for " << x;
    }
    EXPECT_EQ(float_to_f16(-x), h | 0x8000) << x;
  }
}

TEST(SafeTensors, SaveIsAtomicAndLoadNamesFile) {
  ScratchDir dir;
  const std::string path = dir.file("model.safetensors");
  std::mt19937_64 rng(24);
  SafeTensorsWriter first;
  first.add_f32("a", {4}, random_floats(rng, 4));
  first.save(path);
  SafeTensorsWriter second;
  second.add_f32("b", {2, 2}, random_floats(rng, 4));
  second.save(path);
  const SafeTensorsFile loaded = SafeTensorsFile::load(path);
  EXPECT_EQ(loaded.names(), std::vector<std::string>{"b"});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  expect_error([&] { SafeTensorsFile::load(dir.file("absent.safetensors")); },
               {"absent.safetensors", "No such file"});
}

// Every strict prefix of a valid file is rejected with an sqa::Error (never a crash or a
// silently shorter tensor).
TEST(SafeTensors, EveryTruncationIsAnError) {
  std::mt19937_64 rng(25);
  SafeTensorsWriter writer;
  writer.add_f32("embed.weight", {6, 4}, random_floats(rng, 24));
  writer.add_f32("lm_head.bias", {6}, random_floats(rng, 6), TensorDType::bf16);
  writer.set_metadata("format", "pt");
  const std::string bytes = writer.serialize();
  for (size_t length = 0; length < bytes.size(); ++length) {
    const std::string message =
        error_of([&] { SafeTensorsFile::parse(bytes.substr(0, length), "cut.st"); });
    ASSERT_FALSE(message.empty()) << "prefix of " << length << " bytes was accepted";
    EXPECT_NE(message.find("cut.st"), std::string::npos) << message;
  }
  EXPECT_NO_THROW(SafeTensorsFile::parse(bytes));
}

// Random corruption of header or data either parses to a consistent file or throws
// sqa::Error; under ASan this also checks that no read goes out of bounds.
TEST(SafeTensors, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(26);
  SafeTensorsWriter writer;
  writer.add_f32("a", {3, 3}, random_floats(rng, 9));
  writer.add_f32("b", {5}, random_floats(rng, 5), TensorDType::f16);
  const std::string bytes = writer.serialize();
  const int trials = test::small_scale() ? 2000 : 20000;
  int rejected = 0;
  for (int t = 0; t < trials; ++t) {
    std::string bad = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) bad[rng() % bad.size()] = static_cast<char>(rng() & 0xff);
    try {
      const SafeTensorsFile file = SafeTensorsFile::parse(bad);
      size_t covered = 0;
      for (const TensorView& view : file.tensors()) covered += view.nbytes;
      uint64_t n;
      std::memcpy(&n, bad.data(), 8);
      EXPECT_EQ(covered + 8 + n, bad.size());
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, trials / 10);
}

TEST(SafeTensors, CorruptHeadersGiveSpecificErrors) {
  const std::string data(16, '\x01');
  const auto parse = [](const std::string& header, const std::string& block) {
    return [=] { SafeTensorsFile::parse(make_file(header, block), "bad.st"); };
  };
  expect_error(parse(R"({"w":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", data),
               {"bad.st", "'w'", "F33"});
  expect_error(parse(R"({"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", data),
               {"'w'", "[5]", "20 bytes", "[0, 16]"});
  expect_error(parse(R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data),
               {"'w'", "32", "past the end"});
  expect_error(parse(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data),
               {"'w'", "-4", "non-negative"});
  expect_error(parse(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data),
               {"'w'", "begin <= end"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                     data),
               {"'b'", "overlap"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                     data),
               {"'b'", "hole"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data),
               {"16 bytes", "cover 8", "trailing"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                     R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                     data),
               {"'a'", "twice"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[4]}})", data), {"'a'", "data_offsets"});
  expect_error(parse(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":1}})", data),
               {"'a'", "unknown field 'x'"});
  expect_error(parse(R"({"__metadata__":{"k":3}})", ""), {"__metadata__", "'k'", "string"});
  expect_error(parse(R"({"a":{"dtype":"F32",)", data), {"bad.st", "not valid JSON"});
  expect_error(parse(R"([1,2])", ""), {"JSON object"});
  // Header length beyond the file and beyond the sanity limit.
  std::string huge(8, '\0');
  const uint64_t len = 1000;
  std::memcpy(huge.data(), &len, 8);
  expect_error([&] { SafeTensorsFile::parse(huge + "{}", "short.st"); },
               {"short.st", "1000", "past the end"});
  const uint64_t giant = uint64_t{1} << 40;
  std::memcpy(huge.data(), &giant, 8);
  expect_error([&] { SafeTensorsFile::parse(huge + "{}", "giant.st"); }, {"exceeds the limit"});
  // Offsets given out of order in the JSON are fine; tensors come back in offset order.
  const SafeTensorsFile reordered = SafeTensorsFile::parse(
      make_file(R"({"late":{"dtype":"U8","shape":[8],"data_offsets":[8,16]},)"
                R"("early":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                data));
  EXPECT_EQ(reordered.names(), (std::vector<std::string>{"early", "late"}));
}

TEST(SafeTensors, WriterRejectsBadInput) {
  SafeTensorsWriter writer;
  const float x[4] = {1, 2, 3, 4};
  expect_error([&] { writer.add("w", TensorDType::f32, {3}, x, sizeof(x)); },
               {"'w'", "[3]", "12 bytes", "16"});
  writer.add("w", TensorDType::f32, {4}, x, sizeof(x));
  expect_error([&] { writer.add("w", TensorDType::f32, {4}, x, sizeof(x)); }, {"'w'", "twice"});
  expect_error([&] { writer.add("__metadata__", TensorDType::f32, {4}, x, sizeof(x)); },
               {"reserved"});
  expect_error([&] { writer.add_f32("i", {4}, x, TensorDType::i32); }, {"'i'", "I32"});
  EXPECT_EQ(parse_tensor_dtype("BF16"), TensorDType::bf16);
  expect_error([] { parse_tensor_dtype("bf16"); }, {"bf16", "BF16"});
  EXPECT_EQ(to_dtype(to_tensor_dtype(DType::bf16)), DType::bf16);
}

}  // namespace
}  // namespace sqa
