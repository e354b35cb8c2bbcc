// Streamed text with stop strings, on the real Qwen3 tokenizer: the pieces concatenate to the decoded
// text, no piece ends inside a UTF-8 character, and generation text stops before a stop string, even one
// that spans several tokens.
#include "engine/text_stream.h"

#include <gtest/gtest.h>

#include <string>

namespace deltaserve::engine {
namespace {

std::unique_ptr<tokenizer::Tokenizer> Qwen3() {
  absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> t =
      tokenizer::Tokenizer::FromFile(DELTASERVE_QWEN3_TOKENIZER);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

bool ValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(TextStream, PiecesAreWholeCharactersAndConcatenate) {
  std::unique_ptr<tokenizer::Tokenizer> tok = Qwen3();
  ASSERT_NE(tok, nullptr);
  const std::string text = "Grüße 👩‍👩‍👧 日本語のテキスト, and numbers 1234567.";
  TextStream stream(tok.get(), {});
  std::string all;
  for (int32_t id : tok->Encode(text)) {
    const std::string piece = stream.Push(id);
    EXPECT_TRUE(ValidUtf8(piece)) << piece;
    all += piece;
  }
  all += stream.Finish();
  EXPECT_EQ(all, text);
  EXPECT_FALSE(stream.stopped());
}

TEST(TextStream, StopsBeforeAStopStringSpanningTokens) {
  std::unique_ptr<tokenizer::Tokenizer> tok = Qwen3();
  ASSERT_NE(tok, nullptr);
  const std::string text = "The answer is 42.\n\nUser: next question";
  TextStream stream(tok.get(), {"\n\nUser:", "never"});
  std::string all;
  for (int32_t id : tok->Encode(text)) {
    all += stream.Push(id);
    if (stream.stopped()) break;
  }
  all += stream.Finish();
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(stream.stop_string(), "\n\nUser:");
  EXPECT_EQ(all, "The answer is 42.");
}

TEST(TextStream, NoTokenizerMeansNoText) {
  TextStream stream(nullptr, {});
  EXPECT_EQ(stream.Push(5), "");
  EXPECT_EQ(stream.Finish(), "");
}

}  // namespace
}  // namespace deltaserve::engine
