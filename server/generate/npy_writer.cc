// NumPy .npy writer (format 1.0: magic, header length, a Python dict literal padded to 64 bytes, data).
#include "generate/npy_writer.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace deltaserve::generate {

absl::Status WriteNpyFloat32(const std::string& path, const std::vector<float>& data, int64_t rows,
                             int64_t cols) {
  if (static_cast<int64_t>(data.size()) != rows * cols) {
    return absl::InternalError(absl::StrCat("npy: ", data.size(), " values for shape ", rows, " x ", cols));
  }
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", rows, ", ", cols, "), }");
  // Magic (6) + version (2) + length (2) + header, a multiple of 64, ending in a newline.
  const size_t total = ((10 + header.size() + 1 + 63) / 64) * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) return absl::InvalidArgumentError(absl::StrCat("--logits-out: cannot open ", path, " for writing"));
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.put(static_cast<char>(len & 0xff));
  f.put(static_cast<char>(len >> 8));
  f << header;
  f.write(reinterpret_cast<const char*>(data.data()),
          static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!f) return absl::DataLossError(absl::StrCat("--logits-out: writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace deltaserve::generate
