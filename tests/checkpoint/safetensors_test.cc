// Safetensors reader tests: files written here byte by byte (header JSON + data), read back exactly, and
// every kind of corruption refused with a message naming the file and tensor.
#include "models/safetensors.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::models {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Json = nlohmann::json;

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            absl::StrCat("deltaserve_ckpt_", info->test_suite_name(), "_", info->name(), "_", ::getpid());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// The file as safetensors writers lay it out: u64 LE header length, JSON padded with spaces to 8 bytes,
// then the tensors' bytes back to back.
std::string Serialize(const Json& header, const std::string& data) {
  std::string json = header.dump();
  while (json.size() % 8 != 0) json.push_back(' ');
  return LengthPrefix(json.size()) + json + data;
}

std::string Serialize(const std::vector<Entry>& entries, const Json& metadata = nullptr) {
  Json header = Json::object();
  std::string data;
  for (const Entry& e : entries) {
    header[e.name] = {{"dtype", e.dtype},
                      {"shape", e.shape},
                      {"data_offsets", {data.size(), data.size() + e.bytes.size()}}};
    data.append(e.bytes.begin(), e.bytes.end());
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  return Serialize(header, data);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  SafetensorsTest() : seed_(std::random_device{}()), rng_(seed_) {}

  // Random bytes with no zero byte, so a reader returning zeroed or shifted memory cannot pass.
  std::vector<uint8_t> RandomBytes(size_t n) {
    std::uniform_int_distribution<int> dist(1, 255);
    std::vector<uint8_t> b(n);
    for (uint8_t& x : b) x = static_cast<uint8_t>(dist(rng_));
    return b;
  }

  Entry Make(const std::string& name, TensorDtype dtype, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    return {name, std::string(TensorDtypeName(dtype)), shape, RandomBytes(numel * TensorDtypeSize(dtype))};
  }

  void ExpectMatches(const SafetensorsCheckpoint& ckpt, const Entry& e, const std::string& file) {
    SCOPED_TRACE(e.name);
    auto view = ckpt.Get(e.name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->name, e.name);
    EXPECT_EQ(TensorDtypeName(view->dtype), e.dtype);
    EXPECT_EQ(view->shape, e.shape);
    EXPECT_EQ(view->file, file);
    ASSERT_EQ(view->nbytes, e.bytes.size());
    if (!e.bytes.empty()) {
      EXPECT_EQ(std::memcmp(view->data, e.bytes.data(), e.bytes.size()), 0);
    }
  }

  absl::Status OpenError(const std::string& path) {
    auto ckpt = SafetensorsCheckpoint::Open(path);
    EXPECT_FALSE(ckpt.ok()) << "expected an error opening " << path;
    return ckpt.ok() ? absl::OkStatus() : ckpt.status();
  }

  // Writes `bytes` as a file and expects Open to fail with a message naming the file and `problem`.
  void ExpectCorrupt(const std::string& bytes, const std::string& problem) {
    const std::string path = dir_ / "bad.safetensors";
    WriteBytes(path, bytes);
    const absl::Status s = OpenError(path);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(path));
    EXPECT_THAT(s.message(), HasSubstr(problem));
  }

  uint32_t seed_;
  std::mt19937 rng_;
  TempDir dir_;
};

TEST_F(SafetensorsTest, DtypeNamesRoundTrip) {
  for (const char* name :
       {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}) {
    auto dtype = ParseTensorDtype(name);
    ASSERT_TRUE(dtype.ok()) << name;
    EXPECT_EQ(TensorDtypeName(*dtype), name);
  }
  EXPECT_EQ(TensorDtypeSize(TensorDtype::kBF16), 2u);
  EXPECT_EQ(TensorDtypeSize(TensorDtype::kF64), 8u);
  EXPECT_EQ(TensorDtypeSize(TensorDtype::kF8E4M3), 1u);
  EXPECT_FALSE(ParseTensorDtype("F4").ok());
}

TEST_F(SafetensorsTest, ReadsEveryDtypeAndShapeExactly) {
  SCOPED_TRACE(absl::StrCat("seed ", seed_));
  const std::vector<Entry> entries = {
      Make("f32", TensorDtype::kF32, {3, 5}),
      Make("f16", TensorDtype::kF16, {7}),
      Make("bf16", TensorDtype::kBF16, {2, 3, 4}),
      Make("f64", TensorDtype::kF64, {4, 1}),
      Make("i64", TensorDtype::kI64, {3}),
      Make("i32", TensorDtype::kI32, {2, 2}),
      Make("i16", TensorDtype::kI16, {5}),
      Make("i8", TensorDtype::kI8, {9}),
      Make("u8", TensorDtype::kU8, {1, 1, 6}),
      Make("bool", TensorDtype::kBool, {4}),
      Make("f8_e4m3", TensorDtype::kF8E4M3, {2, 8}),
      Make("f8_e5m2", TensorDtype::kF8E5M2, {3, 3}),
      Make("scalar", TensorDtype::kF32, {}),      // 0-dim: one element
      Make("empty", TensorDtype::kBF16, {0, 4}),  // no bytes at all
      Make("layer.0.weight", TensorDtype::kBF16, {16, 33}),
  };
  const std::string path = dir_ / "model.safetensors";
  const std::string bytes = Serialize(entries, Json{{"format", "pt"}});
  WriteBytes(path, bytes);

  auto ckpt = SafetensorsCheckpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->tensors().size(), entries.size());  // __metadata__ is not a tensor
  EXPECT_EQ((*ckpt)->mapped_bytes(), bytes.size());
  for (const Entry& e : entries) ExpectMatches(**ckpt, e, path);

  auto scalar = (*ckpt)->Get("scalar");
  ASSERT_TRUE(scalar.ok());
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->nbytes, 4u);
  float value;
  std::memcpy(&value, scalar->data, 4);
  float expected;
  std::memcpy(&expected, entries[12].bytes.data(), 4);
  EXPECT_EQ(std::memcmp(&value, &expected, 4), 0);

  // Views point into the mapping, not at copies: the same tensor always has the same address.
  EXPECT_EQ((*ckpt)->Get("f32")->data, (*ckpt)->tensors().at("f32").data);
}

// Lines of /proc/self/maps that map `path`: how the test sees whether the reader unmapped a file.
int MappingsOf(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.ends_with(" " + path)) ++n;
  }
  return n;
}

TEST_F(SafetensorsTest, UnmapsOnDestructionAndOnError) {
  const std::string good = dir_ / "good.safetensors";
  WriteBytes(good, Serialize({Make("a", TensorDtype::kF32, {1024})}));
  {
    auto ckpt = SafetensorsCheckpoint::Open(good);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ(MappingsOf(good), 1);
  }
  EXPECT_EQ(MappingsOf(good), 0);

  // A shard that fails validation after an earlier one was mapped: nothing may stay mapped.
  const std::string bad = dir_ / "bad.safetensors";
  WriteBytes(bad, LengthPrefix(2) + "[]");
  WriteBytes(dir_ / "model.safetensors.index.json",
             Json{{"weight_map", {{"a", "good.safetensors"}, {"b", "bad.safetensors"}}}}.dump());
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir_.str()).ok());
  EXPECT_EQ(MappingsOf(good), 0);
  EXPECT_EQ(MappingsOf(bad), 0);
}

TEST_F(SafetensorsTest, DirectoryWithSingleFile) {
  const std::vector<Entry> entries = {Make("a", TensorDtype::kF32, {2, 2}),
                                      Make("b", TensorDtype::kI64, {3})};
  WriteBytes(dir_ / "model.safetensors", Serialize(entries));
  auto ckpt = SafetensorsCheckpoint::Open(dir_.str());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (const Entry& e : entries) ExpectMatches(**ckpt, e, dir_ / "model.safetensors");
}

TEST_F(SafetensorsTest, GetUnknownTensorIsNotFound) {
  WriteBytes(dir_ / "model.safetensors", Serialize({Make("a", TensorDtype::kF32, {2})}));
  auto ckpt = SafetensorsCheckpoint::Open(dir_.str());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto missing = (*ckpt)->Get("model.norm.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("model.norm.weight"));
}

TEST_F(SafetensorsTest, ShardedIndex) {
  SCOPED_TRACE(absl::StrCat("seed ", seed_));
  const std::vector<Entry> shard1 = {Make("model.embed_tokens.weight", TensorDtype::kBF16, {8, 4}),
                                     Make("model.layers.0.mlp.up_proj.weight", TensorDtype::kBF16, {6, 4})};
  const std::vector<Entry> shard2 = {Make("model.layers.1.linear_attn.A_log", TensorDtype::kF32, {4}),
                                     Make("model.norm.weight", TensorDtype::kBF16, {4}),
                                     Make("lm_head.weight", TensorDtype::kBF16, {8, 4})};
  const std::string s1 = "model-00001-of-00002.safetensors";
  const std::string s2 = "model-00002-of-00002.safetensors";
  WriteBytes(dir_ / s1, Serialize(shard1));
  WriteBytes(dir_ / s2, Serialize(shard2));
  Json index = {{"metadata", {{"total_size", 1234}}}, {"weight_map", Json::object()}};
  for (const Entry& e : shard1) index["weight_map"][e.name] = s1;
  for (const Entry& e : shard2) index["weight_map"][e.name] = s2;
  WriteBytes(dir_ / "model.safetensors.index.json", index.dump(2));
  // A stray single file beside the index must not be read: the index wins.
  WriteBytes(dir_ / "model.safetensors", "garbage");

  for (const std::string& path : {dir_.str(), dir_ / "model.safetensors.index.json"}) {
    SCOPED_TRACE(path);
    auto ckpt = SafetensorsCheckpoint::Open(path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ((*ckpt)->tensors().size(), 5u);
    EXPECT_EQ((*ckpt)->mapped_bytes(), fs::file_size(dir_ / s1) + fs::file_size(dir_ / s2));
    for (const Entry& e : shard1) ExpectMatches(**ckpt, e, (fs::path(dir_.str()) / s1).string());
    for (const Entry& e : shard2) ExpectMatches(**ckpt, e, (fs::path(dir_.str()) / s2).string());
  }
}

TEST_F(SafetensorsTest, ShardMissing) {
  WriteBytes(dir_ / "a.safetensors", Serialize({Make("x", TensorDtype::kF32, {2})}));
  WriteBytes(dir_ / "model.safetensors.index.json",
             Json{{"weight_map", {{"x", "a.safetensors"}, {"y", "b.safetensors"}}}}.dump());
  const absl::Status s = OpenError(dir_.str());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("shard \"b.safetensors\""));
  EXPECT_THAT(s.message(), HasSubstr("is missing"));
}

TEST_F(SafetensorsTest, IndexedTensorAbsentFromShard) {
  WriteBytes(dir_ / "a.safetensors", Serialize({Make("x", TensorDtype::kF32, {2})}));
  WriteBytes(dir_ / "model.safetensors.index.json",
             Json{{"weight_map", {{"x", "a.safetensors"}, {"ghost", "a.safetensors"}}}}.dump());
  const absl::Status s = OpenError(dir_.str());
  EXPECT_THAT(s.message(), HasSubstr("tensor \"ghost\" is listed for shard \"a.safetensors\""));
  EXPECT_THAT(s.message(), HasSubstr("absent from"));
}

TEST_F(SafetensorsTest, TensorInTwoShards) {
  WriteBytes(dir_ / "a.safetensors", Serialize({Make("x", TensorDtype::kF32, {2})}));
  WriteBytes(dir_ / "b.safetensors",
             Serialize({Make("x", TensorDtype::kF32, {2}), Make("y", TensorDtype::kF32, {2})}));
  WriteBytes(dir_ / "model.safetensors.index.json",
             Json{{"weight_map", {{"x", "a.safetensors"}, {"y", "b.safetensors"}}}}.dump());
  const absl::Status s = OpenError(dir_.str());
  EXPECT_THAT(s.message(), HasSubstr("tensor \"x\" appears in two shards"));
  EXPECT_THAT(s.message(), HasSubstr("a.safetensors"));
  EXPECT_THAT(s.message(), HasSubstr("b.safetensors"));
}

TEST_F(SafetensorsTest, IndexProblems) {
  WriteBytes(dir_ / "model.safetensors.index.json", "{\"weight_map\": [1, 2]}");
  EXPECT_THAT(OpenError(dir_.str()).message(), HasSubstr("weight_map: expected an object"));
  WriteBytes(dir_ / "model.safetensors.index.json", "{\"metadata\": {}}");
  EXPECT_THAT(OpenError(dir_.str()).message(), HasSubstr("weight_map missing"));
  WriteBytes(dir_ / "model.safetensors.index.json", "{\"weight_map\": {");
  EXPECT_THAT(OpenError(dir_.str()).message(), HasSubstr("not valid JSON"));
  // Shard names come from the checkpoint's author and must stay inside its directory.
  WriteBytes(dir_ / "model.safetensors.index.json", Json{{"weight_map", {{"x", "../x.safetensors"}}}}.dump());
  EXPECT_THAT(OpenError(dir_.str()).message(), HasSubstr("must be a relative path inside the directory"));
}

TEST_F(SafetensorsTest, MissingPaths) {
  const absl::Status none = OpenError(dir_ / "nope.safetensors");
  EXPECT_EQ(none.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.message(), HasSubstr("nope.safetensors"));
  const absl::Status empty_dir = OpenError(dir_.str());
  EXPECT_EQ(empty_dir.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(empty_dir.message(), HasSubstr("neither model.safetensors nor model.safetensors.index.json"));
}

TEST_F(SafetensorsTest, FileShorterThanLengthPrefix) {
  ExpectCorrupt("", "shorter than the 8-byte header length");
  ExpectCorrupt("abcde", "file is 5 bytes, shorter than the 8-byte header length");
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  ExpectCorrupt(LengthPrefix(100) + "{}", "header length 100 runs past the end of the file (10 bytes)");
}

TEST_F(SafetensorsTest, HeaderLengthAbsurd) {
  ExpectCorrupt(LengthPrefix(uint64_t{1} << 62) + "{}", "is absurdly large");
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  const std::string json = "{\"a\": {\"dtype\": ";
  ExpectCorrupt(LengthPrefix(json.size()) + json, "header is not valid JSON");
  ExpectCorrupt(LengthPrefix(2) + "[]", "header must be a JSON object, got array");
}

TEST_F(SafetensorsTest, EntryMissingField) {
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    SCOPED_TRACE(field);
    Json entry = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}};
    entry.erase(field);
    ExpectCorrupt(Serialize(Json{{"w", entry}}, std::string(8, '\x01')),
                  absl::StrCat("tensor \"w\": ", field, " missing"));
  }
}

TEST_F(SafetensorsTest, EntryWrongTypes) {
  ExpectCorrupt(Serialize(Json{{"w", 3}}, ""), "tensor \"w\": expected an object, got integer");
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", 1}, {"shape", {1}}, {"data_offsets", {0, 4}}}}}, "abcd"),
                "tensor \"w\": dtype: expected a string");
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}}}}, "abcd"),
                "tensor \"w\": shape[0] is negative (-1)");
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", "2"}, {"data_offsets", {0, 4}}}}}, "abcd"),
                "tensor \"w\": shape: expected an array");
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0}}}}}, "abcd"),
                "tensor \"w\": data_offsets: expected [begin, end]");
}

TEST_F(SafetensorsTest, UnknownDtype) {
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F4"}, {"shape", {2}}, {"data_offsets", {0, 1}}}}}, "ab"),
                "tensor \"w\": unknown dtype \"F4\"");
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}},
                          std::string(8, '\x01')),
                "tensor \"w\": data_offsets [0, 16] out of range: the data section holds 8 bytes");
}

TEST_F(SafetensorsTest, OffsetsEndBeforeBegin) {
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {8, 4}}}}},
                          std::string(8, '\x01')),
                "tensor \"w\": data_offsets [8, 4]: end < begin");
}

TEST_F(SafetensorsTest, OffsetsOverlap) {
  const Json header = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                       {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  ExpectCorrupt(Serialize(header, std::string(12, '\x01')),
                "tensor \"b\" data_offsets [4, 12] overlap tensor \"a\"");
}

TEST_F(SafetensorsTest, OffsetsDisagreeWithShape) {
  ExpectCorrupt(Serialize(Json{{"w", {{"dtype", "BF16"}, {"shape", {2, 3}}, {"data_offsets", {0, 10}}}}},
                          std::string(12, '\x01')),
                "tensor \"w\": data_offsets [0, 10] hold 10 bytes but BF16 shape [2, 3] needs 12");
  // A shape whose byte size wraps around 64 bits must not sneak past the size check.
  ExpectCorrupt(
      Serialize(Json{{"w", {{"dtype", "F32"}, {"shape", {uint64_t{1} << 62, 4}}, {"data_offsets", {0, 0}}}}},
                ""),
      "overflows a 64-bit byte size");
}

}  // namespace
}  // namespace deltaserve::models
