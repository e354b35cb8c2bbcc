// The standard process_* metrics (CPU seconds, resident and virtual memory, open fds, start time) read
// from /proc at scrape time, since prometheus-cpp ships no process collector.
#ifndef DELTASERVE_SERVER_METRICS_PROCESS_COLLECTOR_H_
#define DELTASERVE_SERVER_METRICS_PROCESS_COLLECTOR_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <vector>

namespace deltaserve::metrics {

class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace deltaserve::metrics

#endif  // DELTASERVE_SERVER_METRICS_PROCESS_COLLECTOR_H_
