// generation_config.json: a real Qwen3-style file, transformers' defaults for what is missing, the request
// defaults derived from it, loading from a model directory (file optional), and errors naming the field
// and the file.
#include "engine/generation_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kSource[] = "m/generation_config.json";

GenerationConfig Parse(const std::string& text) {
  auto c = ParseGenerationConfig(text, kSource);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : GenerationConfig{};
}

TEST(GenerationConfig, ParsesAQwenStyleFile) {
  const GenerationConfig c = Parse(R"({
    "bos_token_id": 151643,
    "do_sample": true,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0"
  })");
  EXPECT_TRUE(c.do_sample);
  EXPECT_DOUBLE_EQ(c.temperature, 0.6);
  EXPECT_EQ(c.top_k, 20);
  EXPECT_DOUBLE_EQ(c.top_p, 0.95);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(151645, 151643));
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.pad_token_id, 151643);
  EXPECT_FALSE(c.max_new_tokens.has_value());

  const SamplingParams p = DefaultSamplingParams(c);
  EXPECT_DOUBLE_EQ(p.temperature, 0.6);
  EXPECT_EQ(p.top_k, 20);
  EXPECT_DOUBLE_EQ(p.top_p, 0.95);
  EXPECT_DOUBLE_EQ(p.min_p, 0.0);
  EXPECT_DOUBLE_EQ(p.repetition_penalty, 1.0);
  EXPECT_EQ(p.max_new_tokens, 20);
  EXPECT_THAT(p.eos_token_ids, ElementsAre(151645, 151643));
  EXPECT_TRUE(p.stop_token_ids.empty());
  EXPECT_TRUE(ValidateSamplingParams(p, 151936).ok());
}

TEST(GenerationConfig, MissingAndNullFieldsTakeTransformersDefaults) {
  for (const char* text : {"{}", R"({"do_sample": null, "temperature": null, "top_k": null,
                                     "top_p": null, "min_p": null, "eos_token_id": null,
                                     "bos_token_id": null, "max_new_tokens": null})"}) {
    const GenerationConfig c = Parse(text);
    EXPECT_FALSE(c.do_sample);
    EXPECT_DOUBLE_EQ(c.temperature, 1.0);
    EXPECT_EQ(c.top_k, 50);
    EXPECT_DOUBLE_EQ(c.top_p, 1.0);
    EXPECT_DOUBLE_EQ(c.min_p, 0.0);
    EXPECT_DOUBLE_EQ(c.repetition_penalty, 1.0);
    EXPECT_TRUE(c.eos_token_ids.empty());
    EXPECT_FALSE(c.bos_token_id.has_value());
    EXPECT_FALSE(c.pad_token_id.has_value());
    EXPECT_FALSE(c.max_new_tokens.has_value());
    EXPECT_FALSE(c.max_length.has_value());
  }
}

TEST(GenerationConfig, DoSampleFalseIsGreedyWithThePenaltyKept) {
  const GenerationConfig c = Parse(R"({"do_sample": false, "temperature": 0.7, "top_k": 5, "top_p": 0.5,
                                       "min_p": 0.2, "repetition_penalty": 1.1, "eos_token_id": 2})");
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  const SamplingParams p = DefaultSamplingParams(c);
  EXPECT_EQ(p.temperature, 0);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_EQ(p.top_p, 1.0);
  EXPECT_EQ(p.min_p, 0);
  EXPECT_DOUBLE_EQ(p.repetition_penalty, 1.1);
}

TEST(GenerationConfig, MaxNewTokensBeforeMaxLengthBeforeTwenty) {
  EXPECT_EQ(DefaultSamplingParams(Parse(R"({"max_new_tokens": 300, "max_length": 900})")).max_new_tokens,
            300);
  EXPECT_EQ(DefaultSamplingParams(Parse(R"({"max_length": 900})")).max_new_tokens, 900);
  EXPECT_EQ(DefaultSamplingParams(Parse("{}")).max_new_tokens, 20);
}

TEST(GenerationConfig, TopKIsCappedAtTheVocabularyWhenGiven) {
  const GenerationConfig c = Parse(R"({"do_sample": true, "min_p": 0.05})");  // top_k defaults to 50
  EXPECT_EQ(DefaultSamplingParams(c).top_k, 50);
  const SamplingParams small = DefaultSamplingParams(c, 32);
  EXPECT_EQ(small.top_k, 32);
  EXPECT_DOUBLE_EQ(small.min_p, 0.05);
  EXPECT_TRUE(ValidateSamplingParams(small, 32).ok());
}

struct BadFile {
  const char* text;
  const char* field;
};

TEST(GenerationConfig, ErrorsNameTheFieldAndTheFile) {
  const std::vector<BadFile> cases = {
      {R"({"do_sample": "yes"})", "do_sample: expected a boolean, got string"},
      {R"({"temperature": "hot"})", "temperature: expected a number"},
      {R"({"temperature": -1})", "temperature: must be in [0, 100]"},
      {R"({"top_k": 1.5})", "top_k: expected an integer, got floating-point number"},
      {R"({"top_k": -3})", "top_k: must be in [0, "},
      {R"({"top_p": 0})", "top_p: must be in (0, 1]"},
      {R"({"top_p": 1.5})", "top_p: must be in (0, 1]"},
      {R"({"min_p": 2})", "min_p: must be in [0, 1]"},
      {R"({"repetition_penalty": 0})", "repetition_penalty: must be in (0, inf)"},
      {R"({"max_new_tokens": 0})", "max_new_tokens: must be in [1, "},
      {R"({"max_length": "long"})", "max_length: expected an integer"},
      {R"({"eos_token_id": "</s>"})", "eos_token_id: expected an integer or a list of integers"},
      {R"({"eos_token_id": [1, "a"]})", "eos_token_id[1]: expected an integer, got string"},
      {R"({"eos_token_id": -1})", "eos_token_id: must be in [0, 2147483647]"},
      {R"({"eos_token_id": [2, 4294967296]})", "eos_token_id[1]: must be in [0, 2147483647]"},
      {R"({"bos_token_id": 1.0})", "bos_token_id: expected an integer"},
      {R"({"pad_token_id": [0]})", "pad_token_id: expected an integer, got array"},
      {R"([1, 2])", "expected a JSON object, got array"},
      {R"({"temperature": )", "not valid JSON"},
  };
  for (const BadFile& b : cases) {
    auto c = ParseGenerationConfig(b.text, kSource);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << b.text;
    EXPECT_THAT(c.status().message(), HasSubstr(absl::StrCat(kSource, ": ", b.field))) << b.text;
  }
}

// A scratch model directory, made and removed with POSIX calls (not std::filesystem: libtorch.so exports
// broken copies of its functions).
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/gencfg_XXXXXX");
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
  }
  ~TempDir() {
    for (const std::string& f : files_) ::unlink(f.c_str());
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) ::rmdir(it->c_str());
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void Write(const std::string& name, const std::string& text) {
    const std::string file = absl::StrCat(path_, "/", name);
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << file;
    ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    ::close(fd);
    files_.push_back(file);
  }
  void MakeDir(const std::string& name) {
    const std::string dir = absl::StrCat(path_, "/", name);
    ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
    dirs_.push_back(dir);
  }

 private:
  std::string path_;
  std::vector<std::string> files_, dirs_;
};

TEST(GenerationConfigLoad, AbsentFileGivesDefaults) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto c = LoadGenerationConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->do_sample);
  EXPECT_EQ(c->top_k, 50);
  EXPECT_EQ(DefaultSamplingParams(*c).temperature, 0);
}

TEST(GenerationConfigLoad, ReadsTheFile) {
  TempDir dir;
  dir.Write("generation_config.json", R"({"do_sample": true, "temperature": 0.8, "eos_token_id": 7})");
  auto c = LoadGenerationConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->do_sample);
  EXPECT_DOUBLE_EQ(c->temperature, 0.8);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(7));
}

TEST(GenerationConfigLoad, ErrorsCarryThePath) {
  TempDir dir;
  dir.Write("generation_config.json", R"({"top_p": "most"})");
  auto c = LoadGenerationConfig(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(absl::StrCat(dir.path(), "/generation_config.json: top_p")));
}

TEST(GenerationConfigLoad, MissingDirectoryAndUnreadableFileAreErrors) {
  TempDir dir;
  auto missing = LoadGenerationConfig(absl::StrCat(dir.path(), "/no_such_model"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no_such_model"));
  dir.MakeDir("generation_config.json");  // a directory where the file should be: read() fails
  auto unreadable = LoadGenerationConfig(dir.path());
  EXPECT_FALSE(unreadable.ok());
  EXPECT_THAT(unreadable.status().message(), HasSubstr("generation_config.json"));
}

}  // namespace
}  // namespace deltaserve::engine
