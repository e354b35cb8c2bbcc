// Writes a float32 matrix as a NumPy .npy file (format 1.0), so any oracle (numpy.load) can read the
// logits deltaserve-generate produced.
#ifndef DELTASERVE_SERVER_GENERATE_NPY_WRITER_H_
#define DELTASERVE_SERVER_GENERATE_NPY_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace deltaserve::generate {

// rows x cols float32, little-endian, C order.
absl::Status WriteNpyFloat32(const std::string& path, const std::vector<float>& data, int64_t rows,
                             int64_t cols);

}  // namespace deltaserve::generate

#endif  // DELTASERVE_SERVER_GENERATE_NPY_WRITER_H_
