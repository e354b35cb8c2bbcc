// Named, shape-checked tensors from a mapped checkpoint (see tensor_loader.h).
#include "models/tensor_loader.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deltaserve::models {
namespace {

std::optional<at::ScalarType> AtenType(TensorDtype d) {
  switch (d) {
    case TensorDtype::kF32:
      return at::kFloat;
    case TensorDtype::kF16:
      return at::kHalf;
    case TensorDtype::kBF16:
      return at::kBFloat16;
    case TensorDtype::kF64:
      return at::kDouble;
    default:
      return std::nullopt;
  }
}

std::string Shape(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

// Drops the whole pages of a copied tensor's source from this process (the file's private, unmodified
// mapping: a later read would fault them in again from the file), so loading a checkpoint holds its
// weights once in memory, not twice, until the mapping is closed.
void ReleaseMappedPages(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

// An uninitialised CPU tensor in memory the kernel may back with 2 MB pages (MADV_HUGEPAGE, honoured where
// transparent huge pages are "madvise" or "always"). A decode step streams every weight once: on 4 KB
// pages (the checkpoint's mapping, or malloc's) each 4 KB weight row of the 0.8B model took a TLB miss,
// and the projections ran about 10% below the bandwidth they reach on 2 MB pages.
at::Tensor EmptyOnHugePages(const std::vector<int64_t>& shape, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  constexpr size_t kHugePage = size_t{2} << 20;
  void* p = nullptr;
  if (bytes == 0 || posix_memalign(&p, kHugePage, bytes) != 0) return at::empty(shape, dtype);
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KB
  return at::from_blob(p, shape, [](void* q) { std::free(q); }, at::TensorOptions().dtype(dtype));
}

TensorLoader::TensorLoader(const SafetensorsCheckpoint& checkpoint, std::string prefix, at::ScalarType dtype,
                           const c10::Device& device)
    : checkpoint_(checkpoint), prefix_(std::move(prefix)), dtype_(dtype), device_(device) {}

at::Tensor TensorLoader::Take(const std::string& name, const std::vector<int64_t>& shape, bool keep_float32,
                              bool absolute) {
  const std::string full = absolute ? name : prefix_ + name;
  auto it = checkpoint_.tensors().find(full);
  if (it == checkpoint_.tensors().end()) {
    missing_.push_back(absl::StrCat(full, " ", Shape(shape)));
    return at::Tensor();
  }
  used_.insert(full);
  const TensorView& view = it->second;
  std::optional<at::ScalarType> source = AtenType(view.dtype);
  if (!source.has_value()) {
    mismatched_.push_back(
        absl::StrCat(full, ": dtype ", TensorDtypeName(view.dtype), " is not a float type (F32, F16, BF16, F64)"));
    return at::Tensor();
  }
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  int64_t view_numel = 1;
  for (int64_t d : view.shape) view_numel *= d;
  const bool reshapeable = reshapeable_ && reshapeable_(full) && numel == view_numel;
  if (view.shape != shape && !reshapeable) {
    mismatched_.push_back(absl::StrCat(full, ": expected shape ", Shape(shape), ", found ", Shape(view.shape)));
    return at::Tensor();
  }
  const at::ScalarType target = keep_float32 ? at::kFloat : dtype_;
  at::Tensor mapped = at::from_blob(const_cast<void*>(view.data), shape, at::TensorOptions().dtype(*source));
  const bool aligned = reinterpret_cast<uintptr_t>(view.data) % c10::elementSize(*source) == 0;
  at::Tensor out;
  if (device_.is_cpu() && mapped.nbytes() >= kHugePageCopyMinBytes) {
    out = EmptyOnHugePages(shape, target);  // copied (and converted) off the mapping's 4 KB pages
    out.copy_(mapped);
    ReleaseMappedPages(view.data, mapped.nbytes());
  } else if (aligned && *source == target && device_.is_cpu()) {
    out = mapped;
  } else {
    out = mapped.to(device_, target, /*non_blocking=*/false, /*copy=*/true);
  }
  // A NaN or Inf weight would load and serve errors (or garbage) on every request: refuse it here, in the
  // dtype it is used in (a float32 value can overflow a narrower one). One pass over the weights at load.
  if (!at::isfinite(out).all().item<bool>()) nonfinite_.push_back(full);
  return out;
}

absl::Status TensorLoader::Finish() const {
  std::vector<std::string> unexpected;
  for (const auto& [name, view] : checkpoint_.tensors()) {
    if (used_.count(name) || (ignored_ && ignored_(name))) continue;
    unexpected.push_back(name);
  }
  if (missing_.empty() && unexpected.empty() && mismatched_.empty() && nonfinite_.empty()) return absl::OkStatus();
  std::string msg = missing_.empty() && unexpected.empty() && mismatched_.empty()
                        ? "checkpoint weights are not all finite:"
                        : "checkpoint does not match the config:";
  if (!missing_.empty()) absl::StrAppend(&msg, " missing [", absl::StrJoin(missing_, "; "), "]");
  if (!mismatched_.empty()) absl::StrAppend(&msg, " mismatched [", absl::StrJoin(mismatched_, "; "), "]");
  if (!unexpected.empty()) absl::StrAppend(&msg, " unexpected [", absl::StrJoin(unexpected, "; "), "]");
  if (!nonfinite_.empty())
    absl::StrAppend(&msg, " non-finite values (NaN or Inf) in [", absl::StrJoin(nonfinite_, "; "), "]");
  return absl::InvalidArgumentError(msg);
}

}  // namespace deltaserve::models
