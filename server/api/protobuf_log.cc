#include "api/protobuf_log.h"

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>

namespace deltaserve::api {
namespace {

struct LogBudget {
  std::mutex mu;
  double per_second = 10.0 / 60.0;
  double burst = 10;
  double tokens = 10;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  long suppressed = 0;
};

LogBudget& Budget() {
  static LogBudget* budget = new LogBudget();  // never destroyed: protobuf may log during exit
  return *budget;
}

void RateLimitedHandler(google::protobuf::LogLevel level, const char* filename, int line, const std::string& message) {
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  const char* name = level >= 0 && level <= 3 ? kLevels[level] : "?";
  long dropped = 0;
  if (level != google::protobuf::LOGLEVEL_FATAL) {
    LogBudget& b = Budget();
    std::lock_guard<std::mutex> lock(b.mu);
    const auto now = std::chrono::steady_clock::now();
    b.tokens = std::min(b.burst, b.tokens + std::chrono::duration<double>(now - b.last).count() * b.per_second);
    b.last = now;
    if (b.tokens < 1) {
      ++b.suppressed;
      return;
    }
    b.tokens -= 1;
    dropped = b.suppressed;
    b.suppressed = 0;
  }
  if (dropped > 0) std::fprintf(stderr, "[libprotobuf] %ld similar lines suppressed (rate limit)\n", dropped);
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", name, filename, line, message.c_str());
}

}  // namespace

void InstallRateLimitedProtobufLog(int lines_per_minute) {
  LogBudget& b = Budget();
  {
    std::lock_guard<std::mutex> lock(b.mu);
    b.burst = std::max(1, lines_per_minute);
    b.tokens = b.burst;
    b.per_second = b.burst / 60.0;
  }
  google::protobuf::SetLogHandler(&RateLimitedHandler);
}

}  // namespace deltaserve::api
