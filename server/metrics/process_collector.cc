// /proc/self/stat and /proc/self/fd at scrape time (POSIX calls only: std::filesystem is unusable in
// processes that load LibTorch, see docs/building.md).
#include "metrics/process_collector.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace deltaserve::metrics {
namespace {

prometheus::MetricFamily Single(const char* name, const char* help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

int OpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n - 1;  // the descriptor opendir itself holds
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces; fields are counted after its closing parenthesis.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream fields(stat.substr(close + 2));
  std::string f[64];
  for (int i = 3; i <= 24 && fields >> f[i]; ++i) {
  }
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  const double cpu = (std::stod(f[14]) + std::stod(f[15])) / ticks;
  const double start = BootTimeSeconds() + std::stod(f[22]) / ticks;
  std::vector<prometheus::MetricFamily> out;
  out.push_back(Single("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                       prometheus::MetricType::Counter, cpu));
  out.push_back(Single("process_resident_memory_bytes", "Resident memory size in bytes.",
                       prometheus::MetricType::Gauge, std::stod(f[24]) * page));
  out.push_back(Single("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                       prometheus::MetricType::Gauge, std::stod(f[23])));
  out.push_back(Single("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                       prometheus::MetricType::Gauge, start));
  const int fds = OpenFds();
  if (fds >= 0)
    out.push_back(Single("process_open_fds", "Number of open file descriptors.", prometheus::MetricType::Gauge, fds));
  return out;
}

}  // namespace deltaserve::metrics
