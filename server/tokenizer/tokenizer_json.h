// Reads a Hugging Face tokenizer.json into a TokenizerSpec. Every field deltaserve relies on is checked,
// and a component it does not implement is refused (Unimplemented) rather than tokenized differently.
#ifndef DELTASERVE_SERVER_TOKENIZER_TOKENIZER_JSON_H_
#define DELTASERVE_SERVER_TOKENIZER_TOKENIZER_JSON_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer_spec.h"

namespace deltaserve::tokenizer::internal {

// Errors name the JSON field (e.g. "model.merges[12]") and say what is wrong with it.
absl::StatusOr<TokenizerSpec> ParseTokenizerJson(absl::string_view json);

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_TOKENIZER_JSON_H_
