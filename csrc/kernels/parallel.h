// A minimal parallel-for over std::thread: the kernels stay free of any host's thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace onnx_saliency {

// Runs body(begin, end) over [0, total) in contiguous chunks, one per thread.
// `threads` <= 0 uses every core; small ranges run inline.
template <class Body>
void parallel_for(int64_t total, int threads, Body body) {
  if (total <= 0) return;
  int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  n = std::max<int64_t>(1, std::min<int64_t>(n, total));
  if (n == 1) {
    body(int64_t{0}, total);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(n - 1));
  const int64_t chunk = (total + n - 1) / n;
  for (int64_t t = 1; t < n; ++t) {
    const int64_t begin = t * chunk, end = std::min(total, begin + chunk);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  body(int64_t{0}, std::min(total, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace onnx_saliency
