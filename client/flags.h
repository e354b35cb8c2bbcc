// deltaserve-cli's flags, defined in main.cc; every subcommand reads the ones it needs.
#ifndef DELTASERVE_CLIENT_FLAGS_H_
#define DELTASERVE_CLIENT_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(bool, tls);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);
ABSL_DECLARE_FLAG(std::string, token);
ABSL_DECLARE_FLAG(std::string, token_file);
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(double, timeout);
ABSL_DECLARE_FLAG(int32_t, max_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(int64_t, seed);
ABSL_DECLARE_FLAG(std::vector<std::string>, stop);
ABSL_DECLARE_FLAG(bool, ignore_eos);
ABSL_DECLARE_FLAG(std::string, system);
ABSL_DECLARE_FLAG(bool, chat);
ABSL_DECLARE_FLAG(std::vector<std::string>, token_ids);
ABSL_DECLARE_FLAG(bool, show_tokens);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(int32_t, num_requests);
ABSL_DECLARE_FLAG(int32_t, concurrency);
ABSL_DECLARE_FLAG(double, request_rate);
ABSL_DECLARE_FLAG(int32_t, input_len);
ABSL_DECLARE_FLAG(int32_t, output_len);
ABSL_DECLARE_FLAG(double, range_ratio);
ABSL_DECLARE_FLAG(std::string, result_json);
ABSL_DECLARE_FLAG(std::string, protocol);
ABSL_DECLARE_FLAG(std::string, openai_endpoint);
ABSL_DECLARE_FLAG(int32_t, vocab_size);
ABSL_DECLARE_FLAG(int32_t, max_model_len);
ABSL_DECLARE_FLAG(double, score_threshold);
ABSL_DECLARE_FLAG(int32_t, max_detections);
ABSL_DECLARE_FLAG(std::string, draw);

#endif  // DELTASERVE_CLIENT_FLAGS_H_
