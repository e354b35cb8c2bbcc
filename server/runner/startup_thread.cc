#include "runner/startup_thread.h"

#include <exception>
#include <thread>

namespace deltaserve::runner::internal {

void RunOnThreadThatEnds(const std::function<void()>& work) {
  std::exception_ptr error;
  std::thread thread([&] {
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }
  });
  // The thread's exit runs the OpenMP runtime's thread destructor, which ends that thread's team.
  thread.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace deltaserve::runner::internal
