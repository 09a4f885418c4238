// The emulator's host-side interface beyond launching: the launch log and
// options, read by convx/simt.py through the _simt module (module.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace simt {

struct LaunchRecord {
  const char* kernel;
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_shared;
  size_t static_shared;  // the kernel body's own __shared__ arrays, in bytes
};

// The log keeps the newest records; past this many it drops its older half.
constexpr size_t kMaxLogged = 1u << 20;

std::vector<LaunchRecord> launches();
void clear_launches();
// Seeds the block order and the order threads resume after a barrier.
void set_seed(uint64_t seed);
// How many __shared__ objects the runtime poisons at each block start.
size_t shared_objects();

// The runtime's own tests (selftest.cpp): runs the named kernel and returns
// its output buffer; throws c10::Error where the runtime catches a bug.
std::vector<std::string> selftest_names();
std::vector<float> selftest(const std::string& name);

}  // namespace simt
