// The bench target over the OpenAI HTTP API (deltaserve --http-port, vLLM, llama.cpp's llama-server):
// GET /v1/models for the limits, a streamed POST /v1/completions of token ids per request.
#ifndef DELTASERVE_CLIENT_OPENAI_BENCH_TARGET_H_
#define DELTASERVE_CLIENT_OPENAI_BENCH_TARGET_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/bench_target.h"

namespace deltaserve::client {

struct OpenAiTargetOptions {
  std::string server;                      // host:port (plain HTTP)
  std::string endpoint = "/v1/completions";
  std::string token;                       // sent as "Authorization: Bearer <token>"; "" sends none
  // When /v1/models does not say (vLLM does not report the vocabulary): the ids prompts are drawn
  // below and the longest sequence. 0: take the server's figure, and fail without one.
  int vocab_size = 0;
  int max_model_len = 0;
};

// Each request is `{"prompt": [ids], "max_tokens", "temperature", "seed", "ignore_eos": true, "stream":
// true, "stream_options": {"include_usage": true}}`. Output tokens are the final usage's
// completion_tokens (llama.cpp without usage: timings.predicted_n; else one per streamed chunk); TTFT is
// the first chunk that carries text, ITL the gaps between such chunks. InvalidArgument for a server
// that is not host:port.
absl::StatusOr<std::unique_ptr<BenchTarget>> MakeOpenAiBenchTarget(const OpenAiTargetOptions& options);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_OPENAI_BENCH_TARGET_H_
