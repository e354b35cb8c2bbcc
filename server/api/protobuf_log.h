// Protobuf's log lines (one per malformed request: invalid UTF-8 in a string field, say) through a rate
// limit, so a client sending garbage cannot flood the server's log; suppressed lines are counted.
#ifndef DELTASERVE_SERVER_API_PROTOBUF_LOG_H_
#define DELTASERVE_SERVER_API_PROTOBUF_LOG_H_

namespace deltaserve::api {

// Replaces protobuf's log handler for the process: at most `lines_per_minute` lines (a burst of that
// many, refilled evenly), then a count of what was dropped with the next line printed. FATAL lines always
// print. Call once at start-up, before serving (protobuf's handler is not thread-safe to swap).
void InstallRateLimitedProtobufLog(int lines_per_minute = 10);

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_PROTOBUF_LOG_H_
