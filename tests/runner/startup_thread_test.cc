// RunOnStartupThread: the work runs on another thread, its errors come back, and the CPU worker team
// that work started ends with it (the reason it exists: see startup_thread.h).
#include "runner/startup_thread.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace deltaserve::runner {
namespace {

int ProcessThreads() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Runs one ATen op that LibTorch splits over a team of 2 threads (an element-wise op far above its
// grain size), then returns how many threads the process has while this thread is still alive.
int ThreadsAfterAParallelOp() {
  at::set_num_threads(2);  // this thread's team size, whatever the machine's core count
  const at::Tensor x = at::ones({1 << 22});
  EXPECT_EQ((x * 2).sum().item<double>(), 2.0 * (1 << 22));
  return ProcessThreads();
}

// Polls until the process has `want` threads (exiting threads leave /proc shortly after they end).
bool WaitForThreadCount(int want) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (ProcessThreads() != want) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

TEST(StartupThread, RunsTheWorkOnAnotherThreadAndRethrowsItsError) {
  std::thread::id ran_on;
  RunOnStartupThread([&] { ran_on = std::this_thread::get_id(); });
  EXPECT_NE(ran_on, std::thread::id());
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_THROW(RunOnStartupThread([] { throw std::runtime_error("bad checkpoint"); }), std::runtime_error);
}

TEST(StartupThread, ReturnsTheWorksResult) {
  const std::thread::id caller = std::this_thread::get_id();
  const std::thread::id ran_on = RunOnStartupThread([] { return std::this_thread::get_id(); });
  EXPECT_NE(ran_on, caller);
  EXPECT_EQ(RunOnStartupThread([] { return std::string("loaded"); }), "loaded");
}

TEST(StartupThread, TheWorkersItsWorkStartedEndWithIt) {
  // LibTorch's process-wide pools (at::set_num_threads starts one) exist before the count is taken.
  at::set_num_threads(2);
  const int before = ProcessThreads();
  int during = 0;
  RunOnStartupThread([&] { during = ThreadsAfterAParallelOp(); });
  ASSERT_EQ(during, before + 2) << "the startup thread and its worker";
  EXPECT_TRUE(WaitForThreadCount(before)) << ProcessThreads() << " threads, " << before << " before";

  // The control: a thread that ran the same region and still lives keeps its worker, which the
  // count above would have seen.
  std::mutex mu;
  std::condition_variable cv;
  bool ran = false, release = false;
  std::thread lingering([&] {
    ThreadsAfterAParallelOp();
    std::unique_lock<std::mutex> lock(mu);
    ran = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ran; });
  }
  EXPECT_EQ(ProcessThreads(), before + 2);  // the thread and its parked worker
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  lingering.join();
  EXPECT_TRUE(WaitForThreadCount(before));
}

}  // namespace
}  // namespace deltaserve::runner
