// deltaserve-generate: loads a Qwen3.5 checkpoint directory, generates from a prompt, streams the text
// as it is produced and reports timing. The offline face of the model path, and an oracle hook:
// --logits-out writes every step's logits as .npy for any reference to check.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/command_line.h"
#include "cli/model_flags.h"
#include "engine/generation_config.h"
#include "engine/text_stream.h"
#include "generate/npy_writer.h"
#include "models/qwen35/model.h"
#include "runner/model_runner.h"
#include "runner/sampler.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

namespace {
constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();
}  // namespace

ABSL_FLAG(std::string, model, "",
          "Checkpoint directory: config.json, *.safetensors, tokenizer.json (required)");
ABSL_FLAG(std::string, prompt, "", "Prompt text (tokenized with the model's tokenizer.json)");
ABSL_FLAG(std::string, prompt_ids, "",
          "Prompt as comma-separated token ids, e.g. 1,2,3 (instead of --prompt)");
ABSL_FLAG(std::string, chat_file, "",
          "JSON file with an OpenAI-style messages array (roles system, user, assistant, tool), rendered "
          "with Qwen's ChatML template plus the assistant generation prompt (instead of --prompt)");
ABSL_FLAG(bool, enable_thinking, true,
          "With --chat-file: false tells the model to answer without a <think> block");
ABSL_FLAG(int64_t, max_new_tokens, -1,
          "Tokens to generate at most (default: generation_config.json, else 20)");
ABSL_FLAG(double, temperature, kUnset,
          "0 = greedy; default from generation_config.json (greedy if do_sample is false)");
ABSL_FLAG(int64_t, top_k, -1, "Keep the k most likely tokens; 0 = off (default: generation_config.json)");
ABSL_FLAG(double, top_p, kUnset,
          "Nucleus sampling mass in (0, 1]; 1 = off (default: generation_config.json)");
ABSL_FLAG(double, min_p, kUnset, "Drop tokens below min_p x the top probability, [0, 1] (default: config)");
ABSL_FLAG(double, repetition_penalty, kUnset, "> 0; 1 = off (transformers semantics, prompt + output)");
ABSL_FLAG(double, presence_penalty, 0.0, "[-2, 2], subtracted once from every generated token's logit");
ABSL_FLAG(double, frequency_penalty, 0.0, "[-2, 2], subtracted per occurrence of a generated token");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed for reproducible output (default: random, printed)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop strings, comma-separated: generation ends before them");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence tokens");
ABSL_FLAG(int64_t, logprobs, -1, "Print each token's logprob and this many alternatives (0..20) to stderr");
ABSL_FLAG(std::string, logits_out, "",
          "Write every step's logits (float32 [steps, vocab]) to this .npy file");
ABSL_FLAG(std::string, dtype, "float32", "Weights and activations: float32 or bfloat16");
ABSL_FLAG(std::string, weight_dtype, "same",
          "Projection weights: same (as --dtype), int8 or int4 (CPU only: quantized at load, one scale per 32 "
          "values; about 3.8x / 7x fewer bytes than float32 for decode to read)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(
    std::string, inverse_method, "auto",
    "Chunk inverse of the delta-rule prefill: auto, neumann, neumann-fast, neumann-int16, neumann-int8, "
    "neumann-int8-block, neumann-int8-refine, neumann-fp8-block, neumann-fp8-refine, product, forward, "
    "solve-triangular (docs/kernels.md compares them)");
ABSL_FLAG(std::string, state_dtype, "fp32",
          "Recurrent decode state: fp32, bf16, int8, int8-sr, int8-coarse, fp8");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0 = LibTorch's default)");

namespace {

namespace q = deltaserve::models::qwen35;
using deltaserve::engine::SamplingParams;

int Fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "deltaserve-generate: %s\n", message.c_str());
  return code;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: \"", part, "\" is not an integer"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids: no ids given");
  return ids;
}

// Applies the flags the user set on top of the checkpoint's generation_config.json defaults.
SamplingParams Params(SamplingParams p) {
  if (absl::GetFlag(FLAGS_max_new_tokens) >= 0) p.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  if (!std::isnan(absl::GetFlag(FLAGS_temperature))) p.temperature = absl::GetFlag(FLAGS_temperature);
  if (absl::GetFlag(FLAGS_top_k) >= 0) p.top_k = absl::GetFlag(FLAGS_top_k);
  if (!std::isnan(absl::GetFlag(FLAGS_top_p))) p.top_p = absl::GetFlag(FLAGS_top_p);
  if (!std::isnan(absl::GetFlag(FLAGS_min_p))) p.min_p = absl::GetFlag(FLAGS_min_p);
  if (!std::isnan(absl::GetFlag(FLAGS_repetition_penalty))) {
    p.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  }
  p.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
  p.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
  if (absl::GetFlag(FLAGS_seed) >= 0) p.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  p.stop = absl::GetFlag(FLAGS_stop);
  p.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  if (absl::GetFlag(FLAGS_logprobs) >= 0) {
    p.logprobs = true;
    p.top_logprobs = absl::GetFlag(FLAGS_logprobs);
  }
  return p;
}

absl::StatusOr<std::string> RenderChatFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("--chat-file: cannot read ", path));
  std::stringstream json;
  json << f.rdbuf();
  absl::StatusOr<std::vector<deltaserve::tokenizer::ChatMessage>> messages =
      deltaserve::tokenizer::ParseChatMessages(json.str());
  if (!messages.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", messages.status().message()));
  deltaserve::tokenizer::ChatOptions options;
  options.enable_thinking = absl::GetFlag(FLAGS_enable_thinking);
  return deltaserve::tokenizer::RenderChat(*messages, options);
}

int Run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return Fail("--model is required (a checkpoint directory); see --help");
  const int inputs = !absl::GetFlag(FLAGS_prompt).empty() + !absl::GetFlag(FLAGS_prompt_ids).empty() +
                     !absl::GetFlag(FLAGS_chat_file).empty();
  if (inputs != 1) return Fail("give exactly one of --prompt, --prompt-ids and --chat-file");
  if (absl::GetFlag(FLAGS_threads) > 0) at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  absl::StatusOr<q::ModelOptions> parsed = deltaserve::cli::ModelOptionsFromFlags(
      dtype, absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_inverse_method), absl::GetFlag(FLAGS_state_dtype),
      absl::GetFlag(FLAGS_weight_dtype));
  if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
  q::ModelOptions options = *parsed;

  // The tokenizer: needed for --prompt, used for readable output whenever the checkpoint has one.
  std::unique_ptr<deltaserve::tokenizer::Tokenizer> tokenizer;
  if (FileExists(dir + "/tokenizer.json")) {
    absl::StatusOr<std::unique_ptr<deltaserve::tokenizer::Tokenizer>> t =
        deltaserve::tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json");
    if (!t.ok()) return Fail(std::string(t.status().message()), 1);
    tokenizer = *std::move(t);
  } else if (absl::GetFlag(FLAGS_prompt_ids).empty()) {
    return Fail(dir + "/tokenizer.json: not found; use --prompt-ids with a checkpoint that has no tokenizer");
  }
  std::vector<int32_t> prompt;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIds(absl::GetFlag(FLAGS_prompt_ids));
    if (!ids.ok()) return Fail(std::string(ids.status().message()));
    prompt = *ids;
  } else {
    std::string text = absl::GetFlag(FLAGS_prompt);
    if (!absl::GetFlag(FLAGS_chat_file).empty()) {
      absl::StatusOr<std::string> rendered = RenderChatFile(absl::GetFlag(FLAGS_chat_file));
      if (!rendered.ok()) return Fail(std::string(rendered.status().message()));
      text = *rendered;
    }
    prompt = tokenizer->Encode(text);
    if (prompt.empty()) return Fail("the prompt encodes to no tokens");
  }

  absl::StatusOr<deltaserve::engine::GenerationConfig> gen = deltaserve::engine::LoadGenerationConfig(dir);
  if (!gen.ok()) return Fail(std::string(gen.status().message()), 1);
  // Validate everything the flags can get wrong before the (slow) weight load.
  absl::StatusOr<q::Qwen35Config> config = q::LoadQwen35Config(dir);
  if (!config.ok()) return Fail(std::string(config.status().message()), 1);
  SamplingParams params = Params(deltaserve::engine::DefaultSamplingParams(*gen, config->vocab_size));
  if (params.eos_token_ids.empty()) {
    params.eos_token_ids.assign(config->eos_token_ids.begin(), config->eos_token_ids.end());
  }
  absl::StatusOr<deltaserve::runner::Sampler> sampler =
      deltaserve::runner::Sampler::Create(params, config->vocab_size, prompt);
  if (!sampler.ok()) return Fail(std::string(sampler.status().message()));
  deltaserve::runner::RunnerOptions runner_options;
  runner_options.max_seqs = 1;
  runner_options.max_model_len = static_cast<int64_t>(prompt.size()) + params.max_new_tokens + 1;
  runner_options.cuda_graphs = false;  // one sequence, one process: capture would cost more than it saves

  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  auto t0 = now();
  absl::StatusOr<std::unique_ptr<deltaserve::runner::ModelRunner>> model =
      deltaserve::runner::ModelRunner::Load(dir, options, runner_options);
  if (!model.ok()) return Fail(std::string(model.status().message()), 1);
  const double load_s = secs(t0, now());

  at::InferenceMode inference;
  const bool want_logits = !absl::GetFlag(FLAGS_logits_out).empty();
  std::vector<float> logits_rows;
  std::vector<deltaserve::runner::SampleResult> results;
  if (!tokenizer && !params.stop.empty())
    return Fail("--stop: this checkpoint has no tokenizer.json to match text");
  deltaserve::engine::TextStream stream(tokenizer.get(), params.stop);
  auto emit = [](const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  std::string finish = "length";

  t0 = now();
  absl::StatusOr<at::Tensor> logits = (*model)->Forward({prompt}, {0});
  const double prefill_s = secs(t0, now());
  t0 = now();
  int64_t generated = 0;
  while (logits.ok() && generated < params.max_new_tokens) {
    at::Tensor row = (*logits)[0].contiguous();
    if (want_logits)
      logits_rows.insert(logits_rows.end(), row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
    absl::StatusOr<deltaserve::runner::SampleResult> r = sampler->Sample(row);
    if (!r.ok()) return Fail(std::string(r.status().message()), 1);
    results.push_back(*r);
    ++generated;
    // Without a tokenizer the output is the ids themselves.
    emit(tokenizer ? stream.Push(r->token_id) : absl::StrCat(generated > 1 ? " " : "", r->token_id));
    if (deltaserve::runner::IsStopToken(params, r->token_id) || stream.stopped()) {
      finish = "stop";
      break;
    }
    if (generated < params.max_new_tokens) logits = (*model)->Forward({{r->token_id}}, {0});
  }
  if (!logits.ok()) return Fail(std::string(logits.status().message()), 1);
  const double decode_s = secs(t0, now());
  emit(stream.Finish());
  std::printf("\n");

  if (params.logprobs) {
    for (const auto& r : results) {
      std::string line = absl::StrCat("token ", r.token_id, " logprob ", r.logprob);
      for (const auto& alt : r.top_logprobs) absl::StrAppend(&line, " | ", alt.token_id, ":", alt.logprob);
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  if (want_logits) {
    absl::Status st =
        deltaserve::generate::WriteNpyFloat32(absl::GetFlag(FLAGS_logits_out), logits_rows,
                                              static_cast<int64_t>(results.size()), config->vocab_size);
    if (!st.ok()) return Fail(std::string(st.message()), 1);
  }
  std::fprintf(stderr,
               "deltaserve-generate: %zu prompt tokens, %ld generated (finish: %s, seed %llu); load %.2f s, "
               "prefill %.1f tok/s, decode %.1f tok/s\n",
               prompt.size(), generated, finish.c_str(), static_cast<unsigned long long>(sampler->seed()),
               load_s, prompt.size() / prefill_s, generated > 1 ? (generated - 1) / decode_s : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (Abseil's default matches files named after the binary).
  const std::vector<std::string> extra = deltaserve::cli::ParseCommandLine(
      argc, argv,
      "Generates text with a Qwen3.5 checkpoint.\n"
      "  deltaserve-generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3 | --chat-file F)\n"
      "      [--max-new-tokens N]\n"
      "      [sampling flags] [--logits-out FILE.npy]\n"
      "Sampling defaults come from DIR/generation_config.json; flags override them. Flags may be\n"
      "written with dashes or underscores (--max-new-tokens or --max_new_tokens).",
      "generate_main");
  if (!extra.empty()) {
    std::fprintf(stderr, "%s: unexpected argument \"%s\" (flags start with --; see --help)\n", argv[0],
                 extra.front().c_str());
    return 2;
  }
  return Run();
}
