// Startup work (loading and converting weights) run on a thread that ends with it, so the CPU worker
// threads that work starts end too and the serving threads are the only ones the OpenMP runtime manages.
#ifndef DELTASERVE_SERVER_RUNNER_STARTUP_THREAD_H_
#define DELTASERVE_SERVER_RUNNER_STARTUP_THREAD_H_

#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

namespace deltaserve::runner {
namespace internal {
// Runs `work` on a new thread, joins it, and rethrows what `work` threw.
void RunOnThreadThatEnds(const std::function<void()>& work);
}  // namespace internal

// Runs `work` on a new thread and returns its result once that thread has ended; exceptions thrown by
// `work` are rethrown here. Why: GNU OpenMP keeps one parked worker team per thread that ever ran a
// parallel region, and when the runtime's threads outnumber the CPUs it stops spinning at barriers
// and sleeps in the kernel instead. A team left behind by loading on the main thread, plus the
// engine's own team, is enough for that on 2 cores: every parallel region of every step then pays a
// futex wake-up (measured: the engine thread off the CPU 20% of a batch-8 serving run).
template <typename Work>
std::invoke_result_t<Work&> RunOnStartupThread(Work work) {
  using Result = std::invoke_result_t<Work&>;
  if constexpr (std::is_void_v<Result>) {
    internal::RunOnThreadThatEnds(work);
  } else {
    std::optional<Result> result;
    internal::RunOnThreadThatEnds([&] { result.emplace(work()); });
    return *std::move(result);
  }
}

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_STARTUP_THREAD_H_
