// Parallel loops of the kernels. A host can lend its own thread pool (the ONNX Runtime adapter
// lends ORT's intra-op pool, so the kernels never fight ORT's spinning workers for the cores);
// by default the kernels use std::thread. Kernels stay free of any host's headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace onnx_saliency {

using RangeBody = std::function<void(int64_t begin, int64_t end)>;

// Runs body(begin, end) over disjoint ranges covering [0, total), possibly concurrently.
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual void run(int64_t total, const RangeBody& body) const = 0;
};

// Runs bodies on any thread and keeps the first exception one throws (an exception leaving a
// worker thread would end the process); rethrow() hands it to the calling thread.
class FirstError {
 public:
  void run(const RangeBody& body, int64_t begin, int64_t end) noexcept {
    try {
      body(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

// std::thread implementation: contiguous chunks, one per thread; `threads` <= 0 uses every core.
class ThreadParallel final : public Parallel {
 public:
  explicit ThreadParallel(int threads = 0) : threads_(threads) {}
  void run(int64_t total, const RangeBody& body) const override {
    if (total <= 0) return;
    int64_t n = threads_ > 0 ? threads_ : static_cast<int64_t>(std::thread::hardware_concurrency());
    n = std::max<int64_t>(1, std::min<int64_t>(n, total));
    if (n == 1) {
      body(0, total);
      return;
    }
    FirstError first;
    auto part = [&](int64_t begin, int64_t end) { first.run(body, begin, end); };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(n - 1));
    const int64_t chunk = (total + n - 1) / n;
    for (int64_t t = 1; t < n; ++t) {
      const int64_t begin = t * chunk, end = std::min(total, begin + chunk);
      if (begin >= end) continue;
      try {
        pool.emplace_back(part, begin, end);
      } catch (const std::system_error&) {  // no thread to be had: run it here
        part(begin, end);
      }
    }
    part(0, std::min(total, chunk));
    for (auto& th : pool) th.join();
    first.rethrow();
  }

 private:
  int threads_;
};

}  // namespace onnx_saliency
