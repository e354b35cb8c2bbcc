// GPT-2's byte-level alphabet: each of the 256 bytes stands for one printable character, so that BPE
// merges never see spaces or control bytes. Maps raw bytes to vocab spellings and tokens back to bytes.
#ifndef DELTASERVE_SERVER_TOKENIZER_BYTE_LEVEL_H_
#define DELTASERVE_SERVER_TOKENIZER_BYTE_LEVEL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace deltaserve::tokenizer::internal {

// UTF-8 of the character that stands for byte `b`.
absl::string_view ByteLevelChar(uint8_t b);

// `bytes` spelled in the byte-level alphabet (how the vocab spells a token).
std::string BytesToByteLevel(absl::string_view bytes);

// The bytes a vocab spelling stands for, or nullopt when some character is outside the alphabet.
std::optional<std::string> ByteLevelToBytes(absl::string_view token);

// What the ByteLevel decoder turns one token into: its bytes, or, for a token with any character outside
// the alphabet (an added token such as "<|im_start|>" with non-ASCII text), the token's own UTF-8.
std::string DecodeByteLevelToken(absl::string_view token);

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_BYTE_LEVEL_H_
