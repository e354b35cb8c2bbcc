// deltaserve-cli: the command-line client of a deltaserve server (generate, chat, models, health, bench).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "client/commands.h"
#include "client/flags.h"
#include "cli/command_line.h"

ABSL_FLAG(std::string, server, "localhost:50051", "The server's gRPC address, host:port");
ABSL_FLAG(bool, tls, false, "Connect over TLS, verifying the server against the system's CA roots (or --tls-ca)");
ABSL_FLAG(std::string, tls_ca, "", "TLS: CA bundle (PEM) the server's certificate must chain to (implies --tls)");
ABSL_FLAG(std::string, tls_cert, "", "mTLS: this client's certificate chain (PEM), with --tls-key (implies --tls)");
ABSL_FLAG(std::string, tls_key, "", "mTLS: the private key of --tls-cert (PEM)");
ABSL_FLAG(std::string, token, "",
          "Bearer token sent as metadata \"authorization: Bearer <token>\" on every call (servers started with "
          "--auth-token-file); prefer --token-file, which keeps it out of the process list");
ABSL_FLAG(std::string, token_file, "", "A file whose first line is the bearer token (see --token)");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default model)");
ABSL_FLAG(double, timeout, 0,
          "Seconds each call may take before the client gives up (DEADLINE_EXCEEDED); 0: no limit "
          "(bench: 600, health and models: 10)");
ABSL_FLAG(int32_t, max_tokens, -1, "generate/chat: tokens to generate at most (-1: the server's default)");
ABSL_FLAG(double, temperature, -1, "generate/chat/bench: sampling temperature, 0 = greedy (-1: model default; "
          "bench: 0)");
ABSL_FLAG(double, top_p, -1, "generate/chat: nucleus sampling mass in (0, 1] (-1: model default)");
ABSL_FLAG(int32_t, top_k, -1, "generate/chat: keep the k most likely tokens, 0 = all (-1: model default)");
ABSL_FLAG(int64_t, seed, -1, "Random seed: sampling for generate/chat, prompts and arrivals for bench "
          "(-1: fresh for generate/chat, 0 for bench)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate/chat: comma-separated stop strings");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past end-of-sequence tokens");
ABSL_FLAG(std::string, system, "", "generate --chat/chat: a system message put first in the conversation");
ABSL_FLAG(bool, chat, false, "generate: send the prompt as a user chat message (the model's chat template)");
ABSL_FLAG(std::vector<std::string>, token_ids, {},
          "generate: the prompt as comma-separated token ids instead of text");
ABSL_FLAG(bool, show_tokens, false, "generate: also print the generated token ids (to stderr)");
ABSL_FLAG(bool, json, false, "models, bench, detect-bench: print JSON instead of a table");
ABSL_FLAG(int32_t, num_requests, 64, "bench, detect-bench: measured requests");
ABSL_FLAG(int32_t, concurrency, 4, "bench, detect-bench: requests in flight at most");
ABSL_FLAG(double, request_rate, 0, "bench: requests/s with Poisson arrivals; 0 = as fast as concurrency allows");
ABSL_FLAG(int32_t, input_len, 128, "bench: prompt tokens per request (random ids, mean)");
ABSL_FLAG(int32_t, output_len, 64, "bench: generated tokens per request (mean; end-of-sequence ignored)");
ABSL_FLAG(double, range_ratio, 0, "bench: lengths drawn uniformly in len*(1-r)..len*(1+r), r in [0, 1)");
ABSL_FLAG(std::string, result_json, "", "bench, detect-bench: also write the JSON result to this file");
ABSL_FLAG(std::string, protocol, "grpc",
          "bench: grpc (deltaserve's API at --server) or openai (an OpenAI-compatible HTTP server at --server, "
          "e.g. deltaserve --http-port, vLLM, llama.cpp's llama-server: streamed /v1/completions of token ids)");
ABSL_FLAG(std::string, openai_endpoint, "/v1/completions", "bench --protocol openai: the completions path");
ABSL_FLAG(int32_t, vocab_size, 0,
          "bench --protocol openai: draw prompt ids below this (0: as /v1/models reports; vLLM does not)");
ABSL_FLAG(int32_t, max_model_len, 0,
          "bench --protocol openai: the server's longest sequence (0: as /v1/models reports, else unbounded)");
ABSL_FLAG(double, score_threshold, -1, "detect: drop detections scoring below this, in [0, 1] (-1: the server's 0.25)");
ABSL_FLAG(int32_t, max_detections, 0, "detect: at most this many detections (0: the server's 100)");
ABSL_FLAG(std::string, draw, "", "detect: write the image with the boxes drawn to this PNG file");

namespace {

constexpr char kUsage[] =
    "The command-line client of a deltaserve server.\n"
    "  deltaserve-cli generate [PROMPT...] [--chat] [--max-tokens N] [--temperature T] ...\n"
    "      streams the answer as it is generated (PROMPT from stdin when not given)\n"
    "  deltaserve-cli chat [--system TEXT]       interactive conversation (/reset, /exit; Ctrl-C stops an answer)\n"
    "  deltaserve-cli models [NAME] [--json]     lists the served models, or one model in full\n"
    "  deltaserve-cli health                     the server's and each model's health; exit 0 when all serve\n"
    "  deltaserve-cli detect IMAGE [--draw OUT.png] [--score-threshold T] [--json]   objects in a PNG/JPEG\n"
    "  deltaserve-cli detect-bench IMAGE [--num-requests N] [--concurrency C] [--json] [--result-json FILE]\n"
    "      Detect load generator: C requests in flight, images/s and end-to-end / server latency p50/p90/p99\n"
    "  deltaserve-cli bench [--num-requests N] [--concurrency C] [--request-rate R] [--input-len I]\n"
    "      [--output-len O] [--range-ratio r] [--json] [--result-json FILE] [--protocol grpc|openai]\n"
    "      load generator: throughput and TTFT/TPOT/ITL/E2E latency p50/p90/p99, as vLLM's benchmark;\n"
    "      --protocol openai loads any OpenAI-compatible server (vLLM, llama-server) with the same requests\n"
    "Common: --server host:port (default localhost:50051), --model NAME, --timeout SECONDS;\n"
    "  security: --tls, --tls-ca FILE, --tls-cert FILE --tls-key FILE (mTLS), --token-file FILE.\n"
    "Flags may be written with dashes or underscores.";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args = deltaserve::cli::ParseCommandLine(argc, argv, kUsage, "client/");
  const std::map<std::string, int (*)(const std::vector<std::string>&)> commands = {
      {"generate", deltaserve::client::RunGenerate}, {"chat", deltaserve::client::RunChat},
      {"models", deltaserve::client::RunModels},     {"health", deltaserve::client::RunHealth},
      {"bench", deltaserve::client::RunBench},       {"detect", deltaserve::client::RunDetect},
      {"detect-bench", deltaserve::client::RunDetectBench}};
  if (args.empty()) {
    std::fprintf(stderr, "deltaserve-cli: missing command (generate, chat, models, health, bench, detect, detect-bench); see --help\n");
    return 2;
  }
  const auto it = commands.find(args.front());
  if (it == commands.end()) {
    std::fprintf(stderr, "deltaserve-cli: unknown command \"%s\" (generate, chat, models, health, bench, detect, detect-bench)\n",
                 args.front().c_str());
    return 2;
  }
  args.erase(args.begin());
  return it->second(args);
}
