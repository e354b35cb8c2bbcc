// A .safetensors file from outside: its 8-byte header length, header JSON, dtypes, shapes and offsets.
// Open must refuse anything malformed with a status; every tensor it accepts must lie inside the file.
#include <cstdint>
#include <cstdlib>

#include "fuzz_util.h"
#include "models/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = deltaserve::fuzz::ScratchDir() + "/model.safetensors";
  deltaserve::fuzz::WriteFile(path, data, size);
  auto ckpt = deltaserve::models::SafetensorsCheckpoint::Open(path);
  if (!ckpt.ok()) return 0;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    // Touch the first and last byte of each accepted tensor: ASan reports any view outside the mapping.
    const auto* bytes = static_cast<const volatile uint8_t*>(view.data);
    if (view.nbytes > 0) (void)(bytes[0] + bytes[view.nbytes - 1]);
    if (!(*ckpt)->Get(name).ok()) std::abort();
  }
  return 0;
}
