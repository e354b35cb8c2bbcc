// The byte-level BPE tokenizer against the `tokenizers` library: exact ids and decoded text on the fixture
// sets tools/make_tokenizer_fixtures.py writes (DELTASERVE_TOKENIZER_FIXTURES), incremental decoding, and
// the errors a bad id or a corrupt tokenizer.json must give.
#include "tokenizer/tokenizer.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace deltaserve::tokenizer {
namespace {

using Json = nlohmann::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), checked independently of
// the library's own helper.
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3, cp = b & 0x07;
    } else {
      return false;
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// One fixture set: the cases and the tokenizer they were made with, loaded once per process.
struct FixtureSet {
  Json data;
  std::unique_ptr<Tokenizer> tokenizer;
};

const FixtureSet& LoadSet(const std::string& name) {
  static auto* sets = new std::map<std::string, FixtureSet>;
  auto it = sets->find(name);
  if (it != sets->end()) return it->second;
  FixtureSet& set = (*sets)[name];
  const char* dir = std::getenv("DELTASERVE_TOKENIZER_FIXTURES");
  if (dir == nullptr) {
    ADD_FAILURE() << "DELTASERVE_TOKENIZER_FIXTURES is not set: run through ctest, or run "
                     "tools/make_tokenizer_fixtures.py and point it at the output";
    return set;
  }
  const std::string path = absl::StrCat(dir, "/", name, ".json");
  set.data = Json::parse(ReadFile(path), nullptr, /*allow_exceptions=*/false);
  if (set.data.is_discarded()) {
    ADD_FAILURE() << "cannot read fixture " << path;
    return set;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromFile(set.data["tokenizer"].get<std::string>());
  if (!tokenizer.ok()) {
    ADD_FAILURE() << tokenizer.status();
    return set;
  }
  set.tokenizer = *std::move(tokenizer);
  return set;
}

std::vector<int32_t> Ids(const Json& j) { return j.get<std::vector<int32_t>>(); }

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    set_ = &LoadSet(GetParam());
    if (set_->tokenizer == nullptr) GTEST_FAIL() << "fixture set " << GetParam() << " did not load";
  }
  // Every case with ids: the encoding cases and the decoding-only ones.
  std::vector<const Json*> AllIdCases() const {
    std::vector<const Json*> out;
    for (const Json& c : set_->data["encode"]) out.push_back(&c);
    for (const Json& c : set_->data["decode"]) out.push_back(&c);
    return out;
  }
  const FixtureSet* set_ = nullptr;
};

TEST_P(FixtureTest, EncodeGivesTheSameIds) {
  const Tokenizer& tok = *set_->tokenizer;
  int checked = 0;
  for (const Json& c : set_->data["encode"]) {
    const std::string text = c["text"].get<std::string>();
    const bool parse_special = c["parse_special"].get<bool>();
    EXPECT_EQ(tok.Encode(text, parse_special), Ids(c["ids"]))
        << c["name"].get<std::string>() << " (parse_special=" << parse_special << ")";
    ++checked;
  }
  EXPECT_GT(checked, 400);
}

TEST_P(FixtureTest, DecodeGivesTheSameText) {
  const Tokenizer& tok = *set_->tokenizer;
  for (const Json* c : AllIdCases()) {
    const std::string name = (*c)["name"].get<std::string>();
    absl::StatusOr<std::string> text = tok.Decode(Ids((*c)["ids"]));
    ASSERT_TRUE(text.ok()) << name << ": " << text.status();
    EXPECT_EQ(*text, (*c)["decoded"].get<std::string>()) << name;
    absl::StatusOr<std::string> skipped = tok.Decode(Ids((*c)["ids"]), /*skip_special_tokens=*/true);
    ASSERT_TRUE(skipped.ok()) << name << ": " << skipped.status();
    EXPECT_EQ(*skipped, (*c)["decoded_skip_special"].get<std::string>()) << name;
  }
}

TEST_P(FixtureTest, IncrementalDecodingStreamsTheSameText) {
  for (const bool skip : {false, true}) {
    for (const Json* c : AllIdCases()) {
      const std::string name = (*c)["name"].get<std::string>();
      IncrementalDecoder decoder(set_->tokenizer.get(), skip);
      std::string streamed;
      for (const int32_t id : Ids((*c)["ids"])) {
        absl::StatusOr<std::string> piece = decoder.Push(id);
        ASSERT_TRUE(piece.ok()) << name << ": " << piece.status();
        ASSERT_TRUE(IsValidUtf8(*piece)) << name << ": Push(" << id << ") emitted invalid UTF-8";
        streamed += *piece;
      }
      const std::string rest = decoder.Flush();
      ASSERT_TRUE(IsValidUtf8(rest)) << name;
      streamed += rest;
      EXPECT_EQ(streamed, (*c)[skip ? "decoded_skip_special" : "decoded"].get<std::string>())
          << name << " (skip_special=" << skip << ")";
    }
  }
}

TEST_P(FixtureTest, VocabSizeCountsAddedTokens) {
  EXPECT_EQ(set_->tokenizer->vocab_size(), set_->data["vocab_size"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, FixtureTest, ::testing::Values("qwen3", "small_qwen35", "small_legacy"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// The Qwen3 tokenizer read straight from tests/data, for the tests that need no fixture.
const Tokenizer& Qwen3() {
  static const Tokenizer* tok = [] {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromFile(DELTASERVE_QWEN3_TOKENIZER_JSON);
    if (!t.ok()) {
      ADD_FAILURE() << t.status();
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

TEST(Qwen3Tokenizer, SpecialTokensRoundTrip) {
  const Tokenizer& tok = Qwen3();
  const std::string text = "<|im_start|>user\nHello<|im_end|>\n<think>\n\n</think>";
  const std::vector<int32_t> ids = tok.Encode(text);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(tok.TokenToId("<|im_start|>"), 151644);
  EXPECT_EQ(tok.TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tok.IdToToken(151644), "<|im_start|>");
  EXPECT_EQ(tok.IdToToken(9707), "Hello");
  EXPECT_EQ(tok.TokenToId("Hello"), 9707);
  EXPECT_EQ(tok.TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tok.IdToToken(-1), std::nullopt);
  EXPECT_EQ(tok.IdToToken(151669), std::nullopt);
  EXPECT_TRUE(tok.IsSpecial(151644));
  EXPECT_TRUE(tok.IsSpecial(151643));
  EXPECT_FALSE(tok.IsSpecial(151667));  // <think> is an added token, but not special, in Qwen3
  EXPECT_FALSE(tok.IsSpecial(9707));
  EXPECT_EQ(tok.Decode(ids).value(), text);
  EXPECT_EQ(tok.Decode(ids, /*skip_special_tokens=*/true).value(), "user\nHello\n<think>\n\n</think>");
  EXPECT_EQ(tok.vocab_size(), 151669);
}

TEST(Qwen3Tokenizer, ParseSpecialFalseEncodesSpecialTokensAsText) {
  const Tokenizer& tok = Qwen3();
  EXPECT_EQ(tok.Encode("<|im_start|>"), std::vector<int32_t>{151644});
  const std::vector<int32_t> plain = tok.Encode("<|im_start|>", /*parse_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  for (const int32_t id : plain) EXPECT_FALSE(tok.IsSpecial(id)) << id;
  EXPECT_EQ(tok.Decode(plain).value(), "<|im_start|>");
  // Non-special added tokens still match, as with `tokenizers`' encode_special_tokens.
  EXPECT_EQ(tok.Encode("<tool_call>", /*parse_special=*/false), std::vector<int32_t>{151657});
}

TEST(Qwen3Tokenizer, IdsWithoutAnEntryDecodeToNothingNegativeIdsAreInvalid) {
  // A model's vocabulary is padded past the tokenizer's (151,936 vs 151,669 for Qwen3): those ids decode
  // to nothing, as Hugging Face tokenizers does, so a model's own output always decodes.
  const Tokenizer& tok = Qwen3();
  for (const int32_t padded : {151669, 151935, 1 << 30}) {
    for (const bool bytes : {false, true}) {
      absl::StatusOr<std::string> r = bytes ? tok.DecodeBytes({9707, padded, 9707}) : tok.Decode({9707, padded, 9707});
      ASSERT_TRUE(r.ok()) << padded << " " << r.status();
      EXPECT_EQ(*r, *tok.Decode({9707, 9707})) << padded;
    }
  }
  for (const bool bytes : {false, true}) {
    absl::StatusOr<std::string> r = bytes ? tok.DecodeBytes({9707, -1}) : tok.Decode({9707, -1});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("token id -1"), std::string::npos) << r.status();
  }
  IncrementalDecoder decoder(&tok);
  absl::StatusOr<std::string> r = decoder.Push(999999);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "");
}

TEST(Qwen3Tokenizer, IncrementalDecoderHoldsBackUnfinishedCharacters) {
  const Tokenizer& tok = Qwen3();
  // U+4E2D is E4 B8 AD; byte-level spellings: E4 -> "ä", B8 -> "¸", AD -> "Ń" (U+0143).
  const int32_t e4 = tok.TokenToId("ä").value(), b8 = tok.TokenToId("¸").value();
  const int32_t ad = tok.TokenToId("Ń").value(), x80 = tok.TokenToId("Ģ").value();
  IncrementalDecoder decoder(&tok);
  EXPECT_EQ(decoder.Push(e4).value(), "");
  EXPECT_EQ(decoder.Push(b8).value(), "");
  EXPECT_EQ(decoder.Push(ad).value(), "中");
  EXPECT_EQ(decoder.Push(x80).value(), "\xEF\xBF\xBD");  // a lone continuation byte is final at once
  EXPECT_EQ(decoder.Push(e4).value(), "");
  EXPECT_EQ(decoder.Push(tok.TokenToId("A").value()).value(), "\uFFFDA");
  EXPECT_EQ(decoder.Push(e4).value(), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Flush(), "");
  EXPECT_EQ(tok.DecodeBytes({e4, b8}).value(), "\xE4\xB8");
}

TEST(Qwen3Tokenizer, InvalidUtf8InputIsReplacedFirst) {
  const Tokenizer& tok = Qwen3();
  const std::string invalid = std::string("a\xFF") + "b\xE4\xB8";
  EXPECT_EQ(tok.Encode(invalid), tok.Encode("a\uFFFDb\uFFFD"));
}

TEST(Qwen3Tokenizer, ConcurrentEncodesAgree) {
  const Tokenizer& tok = Qwen3();
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back(
        absl::StrCat("line ", i, ": the café ", i * 7919, " 你好 😀 ", std::string(i % 13, ' '), "end"));
  }
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& t : texts) expected.push_back(tok.Encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) mismatches[t] += tok.Encode(texts[i]) != expected[i];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const int m : mismatches) EXPECT_EQ(m, 0);
}

// A minimal valid tokenizer.json to corrupt: bytes "a", "b" and the merge "a b".
Json MinimalTokenizer() {
  return Json::parse(R"({
    "version": "1.0", "added_tokens": [{"id": 3, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": null, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})");
}

absl::Status LoadError(const Json& j) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromJson(j.dump());
  return t.ok() ? absl::OkStatus() : t.status();
}

void ExpectError(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(s.message().find(needle), std::string::npos) << "'" << needle << "' not in: " << s;
}

TEST(TokenizerJson, MinimalTokenizerLoads) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromJson(MinimalTokenizer().dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("ab<s>ba"), (std::vector<int32_t>{2, 3, 1, 0}));  // bytes outside the vocab drop
  EXPECT_EQ((*t)->vocab_size(), 4);
}

TEST(TokenizerJson, CorruptFilesGiveClearErrors) {
  ExpectError(Tokenizer::FromJson("{\"model\": {").status(), absl::StatusCode::kInvalidArgument,
              "not valid JSON");
  ExpectError(Tokenizer::FromJson("[1, 2]").status(), absl::StatusCode::kInvalidArgument, "JSON object");
  // A number beyond double's range is nlohmann's out_of_range, not parse_error: it used to escape and
  // terminate the process (found by tests/fuzz/fuzz_tokenizer_json).
  ExpectError(Tokenizer::FromJson("{\"model\": {\"vocab\": {\"a\": 4e493}}}").status(),
              absl::StatusCode::kInvalidArgument, "number overflow");

  Json j = MinimalTokenizer();
  j["model"].erase("vocab");
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "model.vocab: is missing");

  j = MinimalTokenizer();
  j.erase("model");
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "model: is missing");

  j = MinimalTokenizer();
  j["model"]["merges"].push_back(Json::array({"a", "zz"}));
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument,
              "model.merges[1]: token \"zz\" is not in model.vocab");

  j = MinimalTokenizer();
  j["model"]["merges"] = Json::array({"b a"});
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "model.merges[0]: the merged token \"ba\"");

  j = MinimalTokenizer();
  j["model"]["merges"] = Json::array({"a b c"});
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "model.merges[0]");

  j = MinimalTokenizer();
  j["model"]["vocab"]["c"] = "three";
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "model.vocab[\"c\"]");

  j = MinimalTokenizer();
  j["added_tokens"][0]["id"] = int64_t{1} << 40;
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "added_tokens[0].id: id 1099511627776");

  j = MinimalTokenizer();
  j["added_tokens"][0].erase("id");
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "added_tokens[0].id");

  j = MinimalTokenizer();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  ExpectError(LoadError(j), absl::StatusCode::kInvalidArgument, "does not compile");
}

TEST(TokenizerJson, UnsupportedComponentsAreRefused) {
  Json j = MinimalTokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  ExpectError(LoadError(j), absl::StatusCode::kUnimplemented, "normalizer.type");

  j = MinimalTokenizer();
  j["model"]["type"] = "WordPiece";
  ExpectError(LoadError(j), absl::StatusCode::kUnimplemented, "model.type");

  j = MinimalTokenizer();
  j["pre_tokenizer"] = nullptr;
  ExpectError(LoadError(j), absl::StatusCode::kUnimplemented, "ByteLevel");

  j = MinimalTokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  ExpectError(LoadError(j), absl::StatusCode::kUnimplemented, "post_processor.type");

  j = MinimalTokenizer();
  j["model"]["byte_fallback"] = true;
  ExpectError(LoadError(j), absl::StatusCode::kUnimplemented, "model.byte_fallback");
}

TEST(TokenizerJson, FileErrorsNameTheFile) {
  const std::string missing = ::testing::TempDir() + "/no_such_tokenizer.json";
  ExpectError(Tokenizer::FromFile(missing).status(), absl::StatusCode::kNotFound, missing);

  const std::string corrupt = ::testing::TempDir() + "/corrupt_tokenizer.json";
  std::ofstream(corrupt) << "{\"model\": {\"vocab\": ";
  ExpectError(Tokenizer::FromFile(corrupt).status(), absl::StatusCode::kInvalidArgument,
              corrupt + ": not valid JSON");
}

TEST(TokenizerJson, UnassignedIdInsideTheRangeDecodesToNothing) {
  Json j = MinimalTokenizer();
  j["added_tokens"][0]["id"] = 10;  // ids 3..9 are unassigned
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 11);
  absl::StatusOr<std::string> with_gap = (*t)->Decode({0, 5, 0});
  ASSERT_TRUE(with_gap.ok()) << with_gap.status();
  EXPECT_EQ(*with_gap, *(*t)->Decode({0, 0}));
}

}  // namespace
}  // namespace deltaserve::tokenizer
