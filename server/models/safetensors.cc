#include "models/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deltaserve::models {
namespace {
// POSIX, not std::filesystem: libtorch.so exports its own copies of std::filesystem's operations
// (status, remove_all, copy_file, ...) that interpose on libstdc++'s in any process linking LibTorch,
// and some of them crash there (remove_all jumps to a null address). Path arithmetic is header code and
// safe; anything that touches the file system goes through libc.
bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}
}  // namespace

namespace {

using Json = nlohmann::json;

// The reference implementation (safetensors' Rust crate) refuses headers above 100 MB; a larger length
// is a corrupt or hostile file, and honouring it would make us parse gigabytes of tensor bytes as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr std::array<std::pair<TensorDtype, absl::string_view>, 12> kDtypeNames = {{
    {TensorDtype::kF32, "F32"},
    {TensorDtype::kF16, "F16"},
    {TensorDtype::kBF16, "BF16"},
    {TensorDtype::kF64, "F64"},
    {TensorDtype::kI64, "I64"},
    {TensorDtype::kI32, "I32"},
    {TensorDtype::kI16, "I16"},
    {TensorDtype::kI8, "I8"},
    {TensorDtype::kU8, "U8"},
    {TensorDtype::kBool, "BOOL"},
    {TensorDtype::kF8E4M3, "F8_E4M3"},
    {TensorDtype::kF8E5M2, "F8_E5M2"},
}};

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

// A JSON value's kind in words, for "expected X, got Y" messages.
std::string Kind(const Json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "floating-point number";
  return j.type_name();
}

absl::StatusOr<uint64_t> NonNegativeInt(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return absl::InvalidArgumentError(absl::StrCat("is negative (", v, ")"));
    return static_cast<uint64_t>(v);
  }
  return absl::InvalidArgumentError(absl::StrCat("expected a non-negative integer, got ", Kind(j)));
}

// Parses the JSON header of one file into `out`, checking every entry against the data region.
absl::Status ParseHeader(const std::string& file, const uint8_t* base, size_t file_size,
                         std::vector<TensorView>* out) {
  if (file_size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian on any host
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header length ", header_len,
                                                   " is absurdly large (limit ", kMaxHeaderBytes, ")"));
  }
  if (header_len > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header length ", header_len,
                                                   " runs past the end of the file (", file_size, " bytes)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(base + 8);
  Json header;
  try {
    header = Json::parse(header_begin, header_begin + header_len);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": header must be a JSON object, got ", Kind(header)));
  }

  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;
  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = absl::StrCat(file, ": tensor ", Quoted(name));
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object, got ", Kind(entry)));
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, " missing"));
    }
    const Json& dtype_json = entry["dtype"];
    if (!dtype_json.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": dtype: expected a string, got ", Kind(dtype_json)));
    }
    const auto dtype = ParseTensorDtype(dtype_json.get<std::string>());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));

    const Json& shape_json = entry["shape"];
    if (!shape_json.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": shape: expected an array, got ", Kind(shape_json)));
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    view.file = file;
    // Track the element count in bytes-safe arithmetic: a hostile shape must not wrap around to a size
    // that happens to match the offsets.
    uint64_t nbytes = TensorDtypeSize(*dtype);
    bool overflow = false;
    for (size_t i = 0; i < shape_json.size(); ++i) {
      const auto dim = NonNegativeInt(shape_json[i]);
      if (!dim.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": shape[", i, "] ", dim.status().message()));
      }
      if (*dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
      view.shape.push_back(static_cast<int64_t>(*dim));
      if (*dim != 0 && nbytes > std::numeric_limits<uint64_t>::max() / *dim) overflow = true;
      nbytes *= *dim;
    }
    if (overflow) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape [", absl::StrJoin(view.shape, ", "),
                                                     "] overflows a 64-bit byte size"));
    }

    const Json& offsets_json = entry["data_offsets"];
    if (!offsets_json.is_array() || offsets_json.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets: expected [begin, end], got ", offsets_json.dump()));
    }
    const auto begin = NonNegativeInt(offsets_json[0]);
    const auto end = NonNegativeInt(offsets_json[1]);
    if (!begin.ok() || !end.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets: ", (!begin.ok() ? begin : end).status().message()));
    }
    if (*end < *begin) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": data_offsets [", *begin, ", ", *end, "]: end < begin"));
    }
    if (*end > data_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets [", *begin, ", ", *end,
                                                     "] out of range: the data section holds ", data_size,
                                                     " bytes"));
    }
    if (*end - *begin != nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin, " bytes but ",
          TensorDtypeName(*dtype), " shape [", absl::StrJoin(view.shape, ", "), "] needs ", nbytes));
    }
    view.data = data + *begin;
    view.nbytes = nbytes;
    ranges.push_back({*begin, *end, name});
    out->push_back(std::move(view));
  }

  // Two tensors sharing bytes would alias in place; the format forbids it, and it signals a bad writer.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // empty tensors occupy no bytes and cannot overlap
    if (prev != nullptr && r.begin < prev->end) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": tensor ", Quoted(r.name), " data_offsets [", r.begin, ", ", r.end,
                       "] overlap tensor ", Quoted(prev->name), " [", prev->begin, ", ", prev->end, "]"));
    }
    prev = &r;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ss.str();
}

}  // namespace

absl::string_view TensorDtypeName(TensorDtype dtype) {
  for (const auto& [d, name] : kDtypeNames) {
    if (d == dtype) return name;
  }
  return "?";
}

size_t TensorDtypeSize(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF64:
    case TensorDtype::kI64:
      return 8;
    case TensorDtype::kF32:
    case TensorDtype::kI32:
      return 4;
    case TensorDtype::kF16:
    case TensorDtype::kBF16:
    case TensorDtype::kI16:
      return 2;
    case TensorDtype::kI8:
    case TensorDtype::kU8:
    case TensorDtype::kBool:
    case TensorDtype::kF8E4M3:
    case TensorDtype::kF8E5M2:
      return 1;
  }
  return 0;
}

absl::StatusOr<TensorDtype> ParseTensorDtype(absl::string_view name) {
  for (const auto& [d, n] : kDtypeNames) {
    if (n == name) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", Quoted(name)));
}

// Builds a checkpoint step by step; the checkpoint owns every mapping from the moment it is made, so an
// error part-way through unmaps what was already mapped when the half-built checkpoint is dropped.
class SafetensorsCheckpointBuilder {
 public:
  SafetensorsCheckpointBuilder() : ckpt_(new SafetensorsCheckpoint()) {}

  // Maps `file` and parses its header into views, without adding them to the checkpoint yet.
  absl::StatusOr<std::vector<TensorView>> MapAndParse(const std::string& file) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      return absl::ErrnoToStatus(err, absl::StrCat(file, ": cannot open"));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(file, ": cannot stat"));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(file, ": not a regular file"));
    }
    const size_t size = static_cast<size_t>(st.st_size);
    if (size < 8) {  // also keeps mmap away from empty files, which it refuses
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": file is ", size, " bytes, shorter than the 8-byte header length"));
    }
    void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (addr == MAP_FAILED) return absl::ErrnoToStatus(map_err, absl::StrCat(file, ": mmap failed"));
    ckpt_->mappings_.push_back({addr, size});
    ckpt_->mapped_bytes_ += size;
    std::vector<TensorView> views;
    absl::Status s = ParseHeader(file, static_cast<const uint8_t*>(addr), size, &views);
    if (!s.ok()) return s;
    return views;
  }

  absl::Status Add(TensorView view) {
    auto [it, inserted] = ckpt_->tensors_.try_emplace(view.name, view);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", Quoted(view.name), " appears in two shards: ", it->second.file, " and ", view.file));
    }
    return absl::OkStatus();
  }

  absl::Status AddFile(const std::string& file) {
    auto views = MapAndParse(file);
    if (!views.ok()) return views.status();
    for (TensorView& v : *views) {
      if (absl::Status s = Add(std::move(v)); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status AddIndex(const std::string& index_path) {
    namespace fs = std::filesystem;
    auto text = ReadTextFile(index_path);
    if (!text.ok()) return text.status();
    Json index;
    try {
      index = Json::parse(*text);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
    }
    if (!index.is_object() || !index.contains("weight_map")) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map missing"));
    }
    const Json& weight_map = index["weight_map"];
    if (!weight_map.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map: expected an object, got ", Kind(weight_map)));
    }
    // Shard name -> the tensors the index promises it holds.
    std::map<std::string, std::vector<std::string>> shards;
    for (const auto& [name, shard] : weight_map.items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map[", Quoted(name),
                                                       "]: expected a file name, got ", Kind(shard)));
      }
      const std::string shard_name = shard.get<std::string>();
      // The index is data from the checkpoint's author: it must not reach files outside the directory.
      const fs::path rel(shard_name);
      if (shard_name.empty() || rel.is_absolute() ||
          std::any_of(rel.begin(), rel.end(), [](const fs::path& p) { return p == ".."; })) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map[", Quoted(name),
                                                       "]: shard name ", Quoted(shard_name),
                                                       " must be a relative path inside the directory"));
      }
      shards[shard_name].push_back(name);
    }
    if (shards.empty()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map is empty"));
    const fs::path dir = fs::path(index_path).parent_path();
    for (const auto& [shard_name, names] : shards) {
      const std::string shard_path = (dir / shard_name).string();
      if (!PathExists(shard_path)) {
        return absl::NotFoundError(absl::StrCat(index_path, ": shard ", Quoted(shard_name), " (holding ",
                                                Quoted(names.front()), ") is missing: ", shard_path));
      }
      auto views = MapAndParse(shard_path);
      if (!views.ok()) return views.status();
      std::set<std::string> present;
      for (const TensorView& v : *views) present.insert(v.name);
      for (const std::string& name : names) {
        if (!present.contains(name)) {
          return absl::NotFoundError(absl::StrCat(index_path, ": tensor ", Quoted(name),
                                                  " is listed for shard ", Quoted(shard_name),
                                                  " but absent from ", shard_path));
        }
      }
      // Tensors a shard holds beyond what the index lists are kept: they cost nothing (mapped anyway),
      // and a duplicate among them is still caught by Add.
      for (TensorView& v : *views) {
        if (absl::Status s = Add(std::move(v)); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  std::unique_ptr<SafetensorsCheckpoint> Release() { return std::move(ckpt_); }

 private:
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
};

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::string& path) {
  namespace fs = std::filesystem;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  }
  SafetensorsCheckpointBuilder builder;
  absl::Status s;
  if (S_ISDIR(st.st_mode)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    const fs::path single = fs::path(path) / "model.safetensors";
    if (PathExists(index.string())) {
      s = builder.AddIndex(index.string());
    } else if (PathExists(single.string())) {
      s = builder.AddFile(single.string());
    } else {
      return absl::NotFoundError(
          absl::StrCat(path, ": holds neither model.safetensors nor model.safetensors.index.json"));
    }
  } else if (absl::EndsWith(path, ".index.json")) {
    s = builder.AddIndex(path);
  } else {
    s = builder.AddFile(path);
  }
  if (!s.ok()) return s;
  return builder.Release();
}

SafetensorsCheckpoint::~SafetensorsCheckpoint() {
  for (const Mapping& m : mappings_) ::munmap(m.addr, m.size);
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(absl::string_view name) const {
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor ", Quoted(name), " not in the checkpoint"));
  }
  return it->second;
}

}  // namespace deltaserve::models
