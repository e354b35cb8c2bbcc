// generate and chat: build a GenerateRequest from the flags, stream the answer to the terminal as it
// arrives, and let Ctrl-C cancel the call (the server frees the sequence's slot at its next step).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <utility>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/flags.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"

namespace deltaserve::client {
namespace {

std::atomic<bool> g_interrupted{false};
void OnInterrupt(int) { g_interrupted = true; }

// SIGINT cancels the call in flight rather than killing the client (which would leave a half line).
class InterruptScope {
 public:
  InterruptScope() {
    g_interrupted = false;
    struct sigaction sa {};
    sa.sa_handler = OnInterrupt;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_);
  }
  ~InterruptScope() { ::sigaction(SIGINT, &old_, nullptr); }

 private:
  struct sigaction old_ {};
};

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    case v1::FINISH_REASON_ERROR: return "error";
    default: return "unfinished";
  }
}

// -1 means "the model's default"; any other negative value is a typo, not a request for the default.
bool CheckSamplingFlags() {
  const std::pair<const char*, double> flags[] = {{"--max-tokens", absl::GetFlag(FLAGS_max_tokens)},
                                                  {"--temperature", absl::GetFlag(FLAGS_temperature)},
                                                  {"--top-p", absl::GetFlag(FLAGS_top_p)},
                                                  {"--top-k", absl::GetFlag(FLAGS_top_k)},
                                                  {"--seed", static_cast<double>(absl::GetFlag(FLAGS_seed))}};
  for (const auto& [name, value] : flags) {
    if (value < 0 && value != -1) {
      std::fprintf(stderr, "deltaserve-cli: %s: must be >= 0, or -1 for the model's default; got %g\n", name, value);
      return false;
    }
  }
  return true;
}

void ApplySamplingFlags(v1::GenerateRequest& req) {
  v1::SamplingParams* s = req.mutable_sampling();
  if (absl::GetFlag(FLAGS_max_tokens) >= 0) s->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  if (absl::GetFlag(FLAGS_temperature) >= 0) s->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (absl::GetFlag(FLAGS_top_p) >= 0) s->set_top_p(absl::GetFlag(FLAGS_top_p));
  if (absl::GetFlag(FLAGS_top_k) >= 0) s->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) s->add_stop(stop);
  s->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  req.set_model(absl::GetFlag(FLAGS_model));
}

struct StreamOutcome {
  grpc::Status status;
  std::string text;
  v1::GenerateResponse last;
  std::vector<int32_t> tokens;
};

// Streams one Generate call, writing text to stdout as it arrives.
StreamOutcome Stream(const v1::GenerateRequest& req) {
  auto stub = v1::TextGeneration::NewStub(ServerChannel());
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::GetFlag(FLAGS_timeout));
  InterruptScope interrupt;
  std::atomic<bool> finished{false};
  std::thread watcher([&] {
    while (!finished) {
      if (g_interrupted) {
        ctx.TryCancel();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  StreamOutcome out;
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
    std::fflush(stdout);
    out.text += resp.text();
    out.tokens.insert(out.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
    out.last = resp;
  }
  out.status = reader->Finish();
  finished = true;
  watcher.join();
  if (!out.text.empty() && out.text.back() != '\n') std::fputc('\n', stdout);
  if (g_interrupted) std::fprintf(stderr, "[cancelled]\n");
  return out;
}

void PrintUsage(const StreamOutcome& o) {
  if (o.last.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) {
    // Cancelled by the client (Stream said so): the final message with usage never came.
    if (absl::GetFlag(FLAGS_show_tokens))
      std::fprintf(stderr, "[tokens: %s]\n", absl::StrJoin(o.tokens, ",").c_str());
    return;
  }
  const v1::Usage& u = o.last.usage();
  const double decode_s = u.total_seconds() - u.time_to_first_token_seconds();
  std::fprintf(stderr, "[%s; %d prompt + %d generated tokens; TTFT %.1f ms; %.1f tokens/s]\n",
               FinishName(o.last.finish_reason()), u.prompt_tokens(), u.completion_tokens(),
               u.time_to_first_token_seconds() * 1e3,
               u.completion_tokens() > 1 && decode_s > 0 ? (u.completion_tokens() - 1) / decode_s : 0.0);
  if (absl::GetFlag(FLAGS_show_tokens))
    std::fprintf(stderr, "[tokens: %s]\n", absl::StrJoin(o.tokens, ",").c_str());
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  if (!CheckSamplingFlags()) return 2;
  v1::GenerateRequest req;
  const std::vector<std::string> ids = absl::GetFlag(FLAGS_token_ids);
  if (!ids.empty()) {
    if (!args.empty()) {
      std::fprintf(stderr, "deltaserve-cli generate: give either PROMPT or --token-ids, not both\n");
      return 2;
    }
    for (const std::string& s : ids) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(s, &id)) {
        std::fprintf(stderr, "deltaserve-cli generate: --token-ids: \"%s\" is not an integer\n", s.c_str());
        return 2;
      }
      req.mutable_token_ids()->add_ids(id);
    }
  } else {
    std::string prompt = absl::StrJoin(args, " ");
    if (args.empty()) {
      if (::isatty(STDIN_FILENO)) std::fprintf(stderr, "(reading the prompt from stdin; end with Ctrl-D)\n");
      prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    }
    if (absl::GetFlag(FLAGS_chat)) {
      v1::ChatInput* chat = req.mutable_chat();
      if (!absl::GetFlag(FLAGS_system).empty()) {
        v1::ChatMessage* sys = chat->add_messages();
        sys->set_role("system");
        sys->set_content(absl::GetFlag(FLAGS_system));
      }
      v1::ChatMessage* user = chat->add_messages();
      user->set_role("user");
      user->set_content(prompt);
    } else {
      req.set_prompt(prompt);
    }
  }
  ApplySamplingFlags(req);
  const StreamOutcome out = Stream(req);
  if (!out.status.ok() && !(g_interrupted && out.status.error_code() == grpc::StatusCode::CANCELLED))
    return ReportFailure("generate", out.status);
  PrintUsage(out);
  return g_interrupted ? 130 : 0;
}

int RunChat(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::fprintf(stderr, "deltaserve-cli chat: takes no arguments (type messages at the prompt)\n");
    return 2;
  }
  if (!CheckSamplingFlags()) return 2;
  std::vector<v1::ChatMessage> history;
  bool failed = false;  // the last turn failed: a script piping into chat must see it
  const bool tty = ::isatty(STDIN_FILENO);
  if (tty) std::fprintf(stderr, "Chat with %s. /reset forgets the conversation, /exit (or Ctrl-D) quits; "
                        "Ctrl-C stops an answer.\n", absl::GetFlag(FLAGS_server).c_str());
  std::string line;
  while (true) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      history.clear();
      continue;
    }
    if (line.empty()) continue;
    v1::GenerateRequest req;
    v1::ChatInput* chat = req.mutable_chat();
    if (!absl::GetFlag(FLAGS_system).empty()) {
      v1::ChatMessage* sys = chat->add_messages();
      sys->set_role("system");
      sys->set_content(absl::GetFlag(FLAGS_system));
    }
    for (const v1::ChatMessage& m : history) *chat->add_messages() = m;
    v1::ChatMessage user;
    user.set_role("user");
    user.set_content(line);
    *chat->add_messages() = user;
    ApplySamplingFlags(req);
    const StreamOutcome out = Stream(req);
    if (!out.status.ok() && out.status.error_code() != grpc::StatusCode::CANCELLED) {
      ReportFailure("chat", out.status);
      failed = true;
      continue;  // the conversation stays as it was; the user may retry or /reset
    }
    failed = false;
    history.push_back(user);
    v1::ChatMessage answer;
    answer.set_role("assistant");
    answer.set_content(out.text);
    history.push_back(answer);
  }
  return failed ? 1 : 0;
}

}  // namespace deltaserve::client
