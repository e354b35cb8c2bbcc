// The subcommands of deltaserve-cli; each takes its positional arguments (flags are global, see
// flags.h) and returns the process exit code.
#ifndef DELTASERVE_CLIENT_COMMANDS_H_
#define DELTASERVE_CLIENT_COMMANDS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

namespace deltaserve::client {

int RunGenerate(const std::vector<std::string>& args);
int RunChat(const std::vector<std::string>& args);
int RunModels(const std::vector<std::string>& args);
int RunHealth(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);
int RunDetect(const std::vector<std::string>& args);
int RunDetectBench(const std::vector<std::string>& args);

// Shared by the commands: the channel to --server, and a failed call reported as one line on stderr.
std::shared_ptr<grpc::Channel> ServerChannel();
// --token, or the first line of --token-file ("" when neither); exits with status 2 on an unreadable file.
std::string BearerToken();
int ReportFailure(const std::string& what, const grpc::Status& status);
// A deadline `seconds` from now, or none when seconds <= 0.
void SetTimeout(grpc::ClientContext& ctx, double seconds);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_COMMANDS_H_
