#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer::internal {
namespace {

// `tokenizers` normalizes with the unicode-normalization-alignments crate, whose tables are Unicode 9.0:
// to it, a character assigned later (such as U+1DF6, or the Unicode 10-15 combining marks) has combining
// class 0 and no decomposition. ICU (Unicode 15 here) would reorder and compose around such marks, so
// the slow path below rebuilds the algorithm from ICU's per-character data, restricted to characters of
// Unicode 9.0 and earlier. Mappings and classes of a character never change once assigned, so this
// reproduces the crate's results.
bool InUnicode9(UChar32 c) {
  UVersionInfo age;
  u_charAge(c, age);
  if (age[0] == 0) return false;  // unassigned
  return age[0] < 9 || (age[0] == 9 && age[1] == 0);
}

uint8_t CombiningClass(UChar32 c) { return InUnicode9(c) ? u_getCombiningClass(c) : 0; }

}  // namespace

absl::StatusOr<Normalizer> Normalizer::Create(const std::vector<NormalizationForm>& forms) {
  Normalizer n;
  for (const NormalizationForm form : forms) {
    UErrorCode status = U_ZERO_ERROR;
    Step step{};
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(status);
    const icu::Normalizer2* nfkd = icu::Normalizer2::getNFKDInstance(status);
    const icu::Normalizer2* nfkc = icu::Normalizer2::getNFKCInstance(status);
    if (U_FAILURE(status)) {
      return absl::InternalError(absl::StrCat("ICU normalizer data unavailable: ", u_errorName(status)));
    }
    switch (form) {
      case NormalizationForm::kNFC:
        step = {nfc, nfd, nfc};
        break;
      case NormalizationForm::kNFD:
        step = {nfd, nfd, nullptr};
        break;
      case NormalizationForm::kNFKC:
        step = {nfkc, nfkd, nfc};
        break;
      case NormalizationForm::kNFKD:
        step = {nfkd, nfkd, nullptr};
        break;
    }
    n.steps_.push_back(step);
  }
  return n;
}

void Normalizer::Apply(const Step& step, absl::string_view text, std::string* out) const {
  // Decompose.
  std::vector<UChar32> cps;
  cps.reserve(text.size());
  icu::UnicodeString mapping;
  for (size_t pos = 0; pos < text.size();) {
    const auto c = static_cast<UChar32>(NextCodePoint(text, &pos));
    if (InUnicode9(c) && step.decompose->getDecomposition(c, mapping)) {
      for (int32_t i = 0; i < mapping.length();) {
        const UChar32 d = mapping.char32At(i);
        cps.push_back(d);
        i += U16_LENGTH(d);
      }
    } else {
      cps.push_back(c);
    }
  }
  // Canonical order: each run of non-starters sorted stably by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClass(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClass(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](UChar32 a, UChar32 b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless something between blocks it.
  if (step.compose != nullptr) {
    size_t kept = 0;
    int starter = -1;
    int between = -1;  // combining class of the last character kept after the starter; -1: none
    for (const UChar32 c : cps) {
      const int ccc = CombiningClass(c);
      if (starter >= 0 && (between == -1 || (between != 0 && between < ccc))) {
        const UChar32 composite = step.compose->composePair(cps[starter], c);
        if (composite >= 0 && InUnicode9(composite)) {
          cps[starter] = composite;
          continue;
        }
      }
      if (ccc == 0) {
        starter = static_cast<int>(kept);
        between = -1;
      } else {
        between = ccc;
      }
      cps[kept++] = c;
    }
    cps.resize(kept);
  }
  out->clear();
  out->reserve(text.size() + text.size() / 4);
  for (const UChar32 c : cps) AppendCodePoint(static_cast<char32_t>(c), out);
}

bool Normalizer::Normalize(absl::string_view text, std::string* out) const {
  bool changed = false;
  std::string scratch, normalized_run;
  for (const Step& step : steps_) {
    const absl::string_view current = changed ? absl::string_view(*out) : text;
    // Text that ICU finds normalized is also normalized by Unicode 9.0's rules (later characters only
    // add reasons to change text), and that is nearly all text.
    if (IsNormalized(step, current)) continue;
    // Otherwise only the runs of non-ASCII text (with the ASCII character before them, which a mark may
    // compose with) can change: an ASCII character never joins what precedes it.
    scratch.clear();
    size_t copied = 0, i = 0;
    while (i < current.size()) {
      if (static_cast<uint8_t>(current[i]) < 0x80) {
        ++i;
        continue;
      }
      const size_t begin = i > copied ? i - 1 : i;
      while (i < current.size() && static_cast<uint8_t>(current[i]) >= 0x80) ++i;
      const absl::string_view run = current.substr(begin, i - begin);
      if (IsNormalized(step, run)) continue;
      Apply(step, run, &normalized_run);
      absl::StrAppend(&scratch, current.substr(copied, begin - copied), normalized_run);
      copied = i;
    }
    if (copied == 0) continue;
    absl::StrAppend(&scratch, current.substr(copied));
    if (scratch == current) continue;
    out->swap(scratch);
    changed = true;
  }
  return changed;
}

bool Normalizer::IsNormalized(const Step& step, absl::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  return step.quick_check->isNormalizedUTF8(piece, status) && U_SUCCESS(status);
}

}  // namespace deltaserve::tokenizer::internal
