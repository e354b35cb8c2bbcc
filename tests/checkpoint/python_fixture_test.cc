// Cross-check against an independent writer: tools/make_safetensors_fixture.py saves tensors with the
// `safetensors` library and their values as JSON; the reader must decode the same numbers.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/safetensors.h"

namespace deltaserve::models {
namespace {

using Json = nlohmann::json;

double Bf16ToDouble(uint16_t bits) {
  const uint32_t f = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

// IEEE half written out by hand rather than with a compiler extension, so the check does not share
// code paths with what it checks.
double F16ToDouble(uint16_t bits) {
  const int sign = (bits >> 15) ? -1 : 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) return mantissa ? std::nan("") : sign * INFINITY;
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

double ElementAsDouble(const TensorView& v, size_t i) {
  const auto* p = static_cast<const uint8_t*>(v.data);
  switch (v.dtype) {
    case TensorDtype::kBF16: {
      uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return Bf16ToDouble(b);
    }
    case TensorDtype::kF16: {
      uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return F16ToDouble(b);
    }
    case TensorDtype::kF32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    default:
      ADD_FAILURE() << "unexpected dtype " << TensorDtypeName(v.dtype);
      return 0;
  }
}

// Registered by tests/checkpoint/CMakeLists.txt only when the venv's python has `safetensors`; the
// fixture step passes the path of expected.json through DELTASERVE_SAFETENSORS_FIXTURE.
TEST(PythonFixture, ReadsWhatSafetensorsWrote) {
  const char* expected_path = std::getenv("DELTASERVE_SAFETENSORS_FIXTURE");
  if (expected_path == nullptr) GTEST_SKIP() << "DELTASERVE_SAFETENSORS_FIXTURE not set (run through ctest)";
  std::ifstream in(expected_path);
  ASSERT_TRUE(in) << expected_path;
  std::stringstream ss;
  ss << in.rdbuf();
  const Json expected = Json::parse(ss.str());

  auto ckpt = SafetensorsCheckpoint::Open(expected["file"].get<std::string>());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->tensors().size(), expected["tensors"].size());
  for (const auto& [name, want] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    auto view = (*ckpt)->Get(name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(TensorDtypeName(view->dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(view->shape, want["shape"].get<std::vector<int64_t>>());
    const Json& values = want["values"];
    ASSERT_EQ(view->nbytes, values.size() * TensorDtypeSize(view->dtype));
    for (size_t i = 0; i < values.size(); ++i) {
      if (view->dtype == TensorDtype::kI64) {
        int64_t got;
        std::memcpy(&got, static_cast<const uint8_t*>(view->data) + 8 * i, 8);
        ASSERT_EQ(got, values[i].get<int64_t>()) << "element " << i;
      } else {
        ASSERT_EQ(ElementAsDouble(*view, i), values[i].get<double>()) << "element " << i;
      }
    }
  }
}

}  // namespace
}  // namespace deltaserve::models
