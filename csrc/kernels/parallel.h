// Parallel loops of the kernels. A host can lend its own thread pool (the ONNX Runtime adapter
// lends ORT's intra-op pool, so the kernels never fight ORT's spinning workers for the cores);
// by default the kernels use std::thread. Kernels stay free of any host's headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
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
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(n - 1));
    const int64_t chunk = (total + n - 1) / n;
    for (int64_t t = 1; t < n; ++t) {
      const int64_t begin = t * chunk, end = std::min(total, begin + chunk);
      if (begin < end) pool.emplace_back(body, begin, end);
    }
    body(0, std::min(total, chunk));
    for (auto& th : pool) th.join();
  }

 private:
  int threads_;
};

}  // namespace onnx_saliency
