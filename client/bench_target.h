// What `deltaserve-cli bench` loads, whatever the protocol: a server that describes its model and runs
// one streamed request of token ids. gRPC (deltaserve's own API) and the OpenAI HTTP API implement it.
#ifndef DELTASERVE_CLIENT_BENCH_TARGET_H_
#define DELTASERVE_CLIENT_BENCH_TARGET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::client {

// The served model's limits that shape the random prompts.
struct ServedModel {
  std::string name;
  int vocab_size = 0;         // prompts are random ids below it
  int max_model_len = 0;      // prompt + output tokens
  int max_prompt_tokens = 0;  // 0: max_model_len - 1
};

// One planned request: random prompt ids, an exact output length (end-of-sequence ignored).
struct BenchRequest {
  std::string model;
  std::vector<int32_t> prompt_ids;
  int max_tokens = 0;
  double temperature = 0;
  uint64_t seed = 0;
};

// One measured request, as seen by the client.
struct RequestRecord {
  bool ok = false;
  std::string error;  // status code and message when !ok
  int prompt_tokens = 0, output_tokens = 0;
  double ttft = 0, e2e = 0;   // seconds from sending
  std::vector<double> itl;    // gaps between consecutive token-carrying messages, seconds
};

class BenchTarget {
 public:
  virtual ~BenchTarget() = default;
  // The model `name` ("" = the server's default). NotFound for an unknown model, Unavailable when the
  // server cannot be reached.
  virtual absl::StatusOr<ServedModel> Describe(const std::string& name) = 0;
  // Runs one request to its end; called from several threads at once. Failures are recorded, not returned.
  virtual RequestRecord Run(const BenchRequest& request, double timeout_seconds) = 0;
  // What the progress line says it loads ("grpc localhost:50051").
  virtual std::string Label() const = 0;
};

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_BENCH_TARGET_H_
