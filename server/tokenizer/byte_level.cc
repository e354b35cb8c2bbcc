#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer::internal {
namespace {

// The alphabet's characters all lie below U+0144 (bytes that are not printable Latin-1 are moved to
// U+0100 + n in byte order).
constexpr char32_t kAlphabetEnd = 0x144;

struct Tables {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, kAlphabetEnd> char_to_byte;
};

const Tables& GetTables() {
  static const Tables* tables = [] {
    auto* t = new Tables;
    t->char_to_byte.fill(-1);
    char32_t next_moved = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : next_moved++;
      AppendCodePoint(c, &t->byte_to_utf8[b]);
      t->char_to_byte[c] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return *tables;
}

}  // namespace

absl::string_view ByteLevelChar(uint8_t b) { return GetTables().byte_to_utf8[b]; }

std::string BytesToByteLevel(absl::string_view bytes) {
  const Tables& t = GetTables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char ch : bytes) out += t.byte_to_utf8[static_cast<uint8_t>(ch)];
  return out;
}

std::optional<std::string> ByteLevelToBytes(absl::string_view token) {
  const Tables& t = GetTables();
  if (!IsValidUtf8(token)) return std::nullopt;
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    const char32_t c = NextCodePoint(token, &pos);
    if (c >= kAlphabetEnd || t.char_to_byte[c] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.char_to_byte[c]));
  }
  return out;
}

std::string DecodeByteLevelToken(absl::string_view token) {
  std::optional<std::string> bytes = ByteLevelToBytes(token);
  return bytes.has_value() ? *std::move(bytes) : std::string(token);
}

}  // namespace deltaserve::tokenizer::internal
