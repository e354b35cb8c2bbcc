// A sharded checkpoint's model.safetensors.index.json from outside, next to one valid shard: its JSON,
// weight_map entries naming shards (paths included) and tensors. Open answers with a status, never more.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "models/safetensors.h"

namespace {

// One F32 tensor "w" of shape [2] in a shard named shard.safetensors.
void WriteShard(const std::string& dir) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header + std::string(8, '\0');
  deltaserve::fuzz::WriteFile(dir + "/shard.safetensors", reinterpret_cast<const uint8_t*>(file.data()), file.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    std::string d = deltaserve::fuzz::ScratchDir() + "/sharded";
    std::filesystem::create_directories(d);
    WriteShard(d);
    return d;
  }();
  deltaserve::fuzz::WriteFile(dir + "/model.safetensors.index.json", data, size);
  (void)deltaserve::models::SafetensorsCheckpoint::Open(dir);
  return 0;
}
