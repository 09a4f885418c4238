// The SIMT runtime: runs a CUDA grid on one CPU thread (semantics in simt.h).
//
// Fibers: a 30-line x86-64 context switch (callee-saved registers, MXCSR and
// the x87 control word), no system call per switch. Stacks are 256 KiB mmap
// regions with a guard page, pooled; a thread takes a stack when it starts
// and returns it when it exits, so a kernel with no barriers runs every thread
// on the same warm stack. Under AddressSanitizer every switch is annotated
// (__sanitizer_start/finish_switch_fiber), as SIMT.md describes.
//
// Shared memory: the kernels' __shared__ arrays are function-local statics in
// namespace convx::cuda. At the first launch the runtime reads its own ELF
// symbol table for those objects (zero-initialised, no guard variable: other
// function-local statics in convx::cuda must have a dynamic initializer) and
// fills them with 0xFF bytes at the start of every block, so a read of a
// slot no thread of this block wrote is a NaN (or -1), not a stale value
// from the previous block.
#include "simt.h"
#include "runtime.h"

#include <c10/util/Exception.h>

#include <dlfcn.h>
#include <elf.h>
#include <sys/mman.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#error "the SIMT emulator's fiber switch is written for x86-64"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define SIMT_ASAN 0
#endif

extern "C" void simt_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl simt_switch
  .hidden simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch,.-simt_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace simt {

thread_local ThreadState* current_thread = nullptr;

DeviceProps& mutable_device_props() {
  static DeviceProps props;
  return props;
}

const DeviceProps& device_props() { return mutable_device_props(); }

namespace {

constexpr size_t kStackSize = 256 * 1024;
constexpr size_t kGuard = 4096;

enum class FState : uint8_t { NotStarted, Runnable, AtBarrier, AtWarp, Exited };

struct Fiber {
  ThreadState ts;
  void* sp = nullptr;
  char* stack = nullptr;  // usable region [stack, stack + kStackSize)
  FState state = FState::NotStarted;
  int linear = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
  uint64_t result = 0;  // what a completed collective gave this lane
  std::vector<AsyncCopy> async;  // cp.async copies not yet waited for
  long async_groups = 0;         // groups committed so far
#if SIMT_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Warp {
  unsigned arrived = 0, mask = 0;
  Collective kind = Collective::SyncWarp;
  int width = 32;
  const char* file = nullptr;
  int line = 0;
  uint64_t val[32];
  int arg[32];
  WarpOp op = nullptr;
  const char* op_name = nullptr;
};

struct Region {
  char* p;
  size_t n;
  std::string name;  // mangled
};

// splitmix64
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

const char* collective_name(Collective k) {
  switch (k) {
    case Collective::SyncWarp: return "__syncwarp";
    case Collective::Shfl: return "__shfl_sync";
    case Collective::ShflUp: return "__shfl_up_sync";
    case Collective::ShflDown: return "__shfl_down_sync";
    case Collective::ShflXor: return "__shfl_xor_sync";
    case Collective::Ballot: return "__ballot_sync";
    case Collective::Any: return "__any_sync";
    case Collective::All: return "__all_sync";
    case Collective::Op: return "a warp-wide op";
  }
  return "?";
}

std::string where(const char* file, int line) {
  std::string f = file ? file : "?";
  const auto pos = f.find("csrc/");
  if (pos != std::string::npos) f = f.substr(pos);
  return f + ":" + std::to_string(line);
}

std::string coords(const uint3& v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

// Everything one launch needs; lives on the launching thread's stack.
struct Run {
  const LaunchSpec* spec;
  void (*body)(void*);
  void* ctx;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int nthreads = 0;
  uint3 block_idx{0, 0, 0};
  void* sched_sp = nullptr;
  Fiber* running = nullptr;
  bool aborted = false;
  int woke_warp = -1;  // a collective completed in this warp during the last resume
  std::string error;
  Rng rng{0};
#if SIMT_ASAN
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
};

thread_local Run* current_run = nullptr;

// ---------------------------------------------------------------- global state

std::mutex g_launch_mutex;  // one grid at a time: shared memory is static
std::mutex g_log_mutex;
std::vector<LaunchRecord> g_log;
uint64_t g_seed = 0;
uint64_t g_launch_count = 0;
std::vector<char*> g_stack_pool;
std::vector<Region> g_shared;
std::map<uintptr_t, std::string> g_functions;       // address -> mangled name, convx::cuda functions
std::map<const void*, size_t> g_static_shared;      // kernel -> bytes of its own __shared__ arrays
bool g_shared_scanned = false;
std::vector<unsigned char> g_dynamic_shared;

char* take_stack() {
  if (!g_stack_pool.empty()) {
    char* s = g_stack_pool.back();
    g_stack_pool.pop_back();
    return s;
  }
  void* m = mmap(nullptr, kStackSize + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  TORCH_CHECK(m != MAP_FAILED, "convx.simt: cannot map a fiber stack");
  mprotect(m, kGuard, PROT_NONE);  // overflow faults instead of corrupting a neighbour
  return static_cast<char*>(m) + kGuard;
}

void give_stack(char* s) { g_stack_pool.push_back(s); }

// Function-local statics of namespace convx::cuda in this library: the
// kernels' __shared__ arrays.
void scan_shared_objects() {
  g_shared_scanned = true;
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&scan_shared_objects), &info) || !info.dli_fname) return;
  std::ifstream f(info.dli_fname, std::ios::binary);
  if (!f) return;
  // Read the headers, the symbol table and its strings only (the library
  // carries megabytes of debug information).
  auto read = [&](uint64_t off, uint64_t n) {
    std::vector<char> b(n);
    f.seekg(std::streamoff(off));
    f.read(b.data(), std::streamsize(n));
    if (!f) b.clear();
    return b;
  };
  const auto ehb = read(0, sizeof(Elf64_Ehdr));
  if (ehb.empty()) return;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(ehb.data());
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) return;
  const auto shb = read(eh->e_shoff, uint64_t(eh->e_shnum) * sizeof(Elf64_Shdr));
  if (shb.empty()) return;
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(shb.data());
  char* base = static_cast<char*>(info.dli_fbase);
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
    const auto symb = read(sh[i].sh_offset, sh[i].sh_size);
    const auto strb = read(sh[sh[i].sh_link].sh_offset, sh[sh[i].sh_link].sh_size);
    if (symb.empty() || strb.empty()) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(symb.data());
    const char* strtab = strb.data();
    const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
    // A __shared__ array has no initializer: it sits in a NOBITS (.bss)
    // section and has no guard variable (_ZGVZ...), unlike a static with a
    // dynamic initializer such as a lookup table.
    std::set<std::string> guarded;
    for (size_t j = 0; j < n; ++j) {
      const char* name = strtab + syms[j].st_name;
      if (std::strncmp(name, "_ZGVZN5convx4cuda", 17) == 0) guarded.insert(std::string("_Z") + (name + 4));  // _ZGVZN... guards _ZZN...
    }
    for (size_t j = 0; j < n; ++j) {
      const auto& s = syms[j];
      const char* fname = strtab + s.st_name;
      if (ELF64_ST_TYPE(s.st_info) == STT_FUNC && s.st_shndx != SHN_UNDEF &&
          std::strncmp(fname, "_ZN5convx4cuda", 14) == 0)
        g_functions[reinterpret_cast<uintptr_t>(base + s.st_value)] = fname;
      if (ELF64_ST_TYPE(s.st_info) != STT_OBJECT || s.st_size == 0 || s.st_shndx == SHN_UNDEF ||
          s.st_shndx >= eh->e_shnum || sh[s.st_shndx].sh_type != SHT_NOBITS)
        continue;
      const char* name = strtab + s.st_name;
      if (std::strncmp(name, "_ZZN5convx4cuda", 15) != 0 || guarded.count(name)) continue;
      g_shared.push_back({base + s.st_value, size_t(s.st_size), name});
    }
  }
}

#if SIMT_ASAN
__attribute__((no_sanitize_address))
#endif
void poison_shared(size_t dynamic_bytes) {
  for (const auto& r : g_shared) std::memset(r.p, 0xFF, r.n);
  if (dynamic_bytes) std::memset(g_dynamic_shared.data(), 0xFF, dynamic_bytes);
}

// ---------------------------------------------------------------- switching

void to_scheduler(Fiber& f, bool exiting) {
  Run& r = *current_run;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, r.sched_bottom, r.sched_size);
#else
  (void)exiting;
#endif
  simt_switch(&f.sp, r.sched_sp);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

[[noreturn]] void fail_in_fiber(const std::string& msg) {
  Run& r = *current_run;
  if (!r.aborted) {
    r.aborted = true;
    r.error = msg;
  }
  Fiber& f = *r.running;
  f.state = FState::AtBarrier;  // parked for good
  to_scheduler(f, false);
  __builtin_unreachable();
}

std::string block_prefix(const Run& r) {
  return std::string("convx.simt: kernel ") + r.spec->kernel + ", block " + coords(r.block_idx) + ": ";
}

std::string thread_desc(const Fiber& f) {
  return "thread " + coords(f.ts.thread_idx) + " (warp " + std::to_string(f.linear / 32) + ", lane " +
         std::to_string(f.linear % 32) + ")";
}

#if SIMT_ASAN
__attribute__((no_sanitize_address))
#endif
void fiber_entry() {
  Run& r = *current_run;
  Fiber& f = *r.running;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  try {
    r.body(r.ctx);
  } catch (const c10::Error& e) {
    fail_in_fiber(block_prefix(r) + "exception in " + thread_desc(f) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail_in_fiber(block_prefix(r) + "exception in " + thread_desc(f) + ": " + e.what());
  }
  f.state = FState::Exited;
  to_scheduler(f, true);
  __builtin_trap();
}

void start_fiber(Fiber& f) {
  f.stack = take_stack();
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackSize) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top) - 9;
  uint32_t mx;
  uint16_t cw;
  asm volatile("stmxcsr %0" : "=m"(mx));
  asm volatile("fnstcw %0" : "=m"(cw));
  std::memset(sp, 0, 9 * sizeof(uint64_t));
  std::memcpy(reinterpret_cast<char*>(sp), &mx, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &cw, 2);
  sp[7] = reinterpret_cast<uint64_t>(&fiber_entry);  // popped by ret
  f.sp = sp;
}

void resume(Run& r, Fiber& f) {
  if (f.state == FState::NotStarted) start_fiber(f);
  f.state = FState::Runnable;
  r.running = &f;
  current_thread = &f.ts;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&r.sched_fake, f.stack, kStackSize);
#endif
  simt_switch(&r.sched_sp, f.sp);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(r.sched_fake, nullptr, nullptr);
#endif
  r.running = nullptr;
  current_thread = nullptr;
  if (f.state == FState::Exited) {
    give_stack(f.stack);
    f.stack = nullptr;
  }
}

// Every fiber of the aborted block gives its stack back; their frames are
// abandoned, so the stacks' shadow memory is cleared before reuse.
void abandon_block(Run& r) {
  for (auto& f : r.fibers) {
    if (f.stack) {
#if SIMT_ASAN
      __asan_unpoison_memory_region(f.stack, kStackSize);
#endif
      give_stack(f.stack);
      f.stack = nullptr;
    }
  }
}

// Runs one block to completion; returns false (with r.error set) on a bug.
bool run_block(Run& r, std::vector<int>& order) {
  for (int t = 0; t < r.nthreads; ++t) {
    Fiber& f = r.fibers[t];
    f.state = FState::NotStarted;
    f.ts.block_idx = r.block_idx;
    f.async.clear();  // copies a thread never waited for are dropped with it
    f.async_groups = 0;
    f.file = nullptr;
    f.line = 0;
  }
  for (auto& w : r.warps) w.arrived = 0;
  poison_shared(r.spec->dynamic_shared);
  const int nwarps = int(r.warps.size());
  std::vector<int> warp_order(nwarps), seg_start(nwarps);
  for (;;) {
    // Warps in a random order, lanes of a warp together in a random order;
    // the first runnable fiber in that order runs until it blocks. So a
    // whole warp runs ahead of the others to its next barrier (as a warp
    // scheduler may let it), which exposes missing barriers between warps.
    for (int w = 0; w < nwarps; ++w) warp_order[w] = w;
    for (int w = nwarps - 1; w > 0; --w) std::swap(warp_order[w], warp_order[r.rng.below(uint64_t(w) + 1)]);
    int k = 0;
    for (int wi = 0; wi < nwarps; ++wi) {
      const int w = warp_order[wi], lanes = std::min(32, r.nthreads - w * 32);
      seg_start[w] = k;
      for (int l = 0; l < lanes; ++l) order[k + l] = w * 32 + l;
      for (int l = lanes - 1; l > 0; --l) std::swap(order[k + l], order[k + int(r.rng.below(uint64_t(l) + 1))]);
      k += lanes;
    }
    for (int i = 0; i < r.nthreads;) {
      Fiber& f = r.fibers[order[i]];
      if (f.state != FState::NotStarted && f.state != FState::Runnable) {
        ++i;
        continue;
      }
      r.woke_warp = -1;
      resume(r, f);
      if (r.aborted) return false;
      i = r.woke_warp >= 0 ? seg_start[r.woke_warp] : i + 1;
    }
    int n_bar = 0, n_warp = 0, n_exit = 0;
    const Fiber *a_bar = nullptr, *a_warp = nullptr, *a_exit = nullptr;
    for (const auto& f : r.fibers) {
      if (f.state == FState::AtBarrier) n_bar++, a_bar = a_bar ? a_bar : &f;
      if (f.state == FState::AtWarp) n_warp++, a_warp = a_warp ? a_warp : &f;
      if (f.state == FState::Exited) n_exit++, a_exit = a_exit ? a_exit : &f;
    }
    if (n_exit == r.nthreads) return true;
    if (n_warp) {
      const Warp& w = r.warps[a_warp->linear / 32];
      std::ostringstream m;
      m << "deadlock: " << thread_desc(*a_warp) << " waits in " << collective_name(w.kind) << " at "
        << where(w.file, w.line) << " (mask 0x" << std::hex << w.mask << ", arrived 0x" << w.arrived << std::dec
        << ") for lanes that " << (n_bar ? "wait at __syncthreads" : "have exited");
      if (a_bar) m << " (" << where(a_bar->file, a_bar->line) << ")";
      r.error = block_prefix(r) + m.str();
      return false;
    }
    if (n_exit) {
      r.error = block_prefix(r) + "barrier divergence: " + thread_desc(*a_bar) + " waits at __syncthreads (" +
                where(a_bar->file, a_bar->line) + ") while " + std::to_string(n_exit) + " thread(s) of the block, " +
                "e.g. " + thread_desc(*a_exit) + ", have exited";
      return false;
    }
    for (const auto& f : r.fibers) {
      if (f.file != a_bar->file || f.line != a_bar->line) {
        r.error = block_prefix(r) + "barrier divergence: " + thread_desc(*a_bar) + " waits at __syncthreads (" +
                  where(a_bar->file, a_bar->line) + ") but " + thread_desc(f) + " at another one (" +
                  where(f.file, f.line) + ")";
        return false;
      }
    }
    for (auto& f : r.fibers) f.state = FState::Runnable;
  }
}

}  // namespace

// ---------------------------------------------------------------- device side

void syncthreads(const char* file, int line) {
  Run& r = *current_run;
  Fiber& f = *r.running;
  f.state = FState::AtBarrier;
  f.file = file;
  f.line = line;
  to_scheduler(f, false);
}

namespace {
uint64_t collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file, int line,
                    WarpOp op, const char* op_name) {
  Run& r = *current_run;
  Fiber& f = *r.running;
  const int wi = f.linear / 32, lane = f.linear % 32;
  Warp& w = r.warps[wi];
  const int lanes_here = std::min(32, r.nthreads - wi * 32);
  const unsigned present = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1);
  auto fail = [&](const std::string& what) {
    fail_in_fiber(block_prefix(r) + thread_desc(f) + ", " + (op_name ? op_name : collective_name(kind)) + " at " +
                  where(file, line) + ": " + what);
  };
  if (!(mask & (1u << lane))) fail("the mask does not name the calling lane");
  if (mask & ~present) {
    std::ostringstream m;
    m << "mask 0x" << std::hex << mask << " names lanes that are not there (the warp has " << std::dec
      << lanes_here << " lanes)";
    fail(m.str());
  }
  if (width <= 0 || width > 32 || (width & (width - 1))) fail("width must be a power of two up to 32");
  for (int l = 0; l < 32; ++l) {
    if ((mask & (1u << l)) && r.fibers[wi * 32 + l].state == FState::Exited)
      fail("mask names lane " + std::to_string(l) + ", which has exited");
  }
  if (w.arrived == 0) {
    w.kind = kind;
    w.mask = mask;
    w.width = width;
    w.file = file;
    w.line = line;
    w.op = op;
    w.op_name = op_name;
  } else if (w.kind != kind || w.mask != mask || w.width != width || w.file != file || w.line != line ||
             w.op != op) {
    std::ostringstream m;
    m << "lanes of the warp meet at different collectives: this one (mask 0x" << std::hex << mask << std::dec
      << ") and " << (w.op_name ? w.op_name : collective_name(w.kind)) << " at " << where(w.file, w.line) << " (mask 0x" << std::hex << w.mask
      << ")";
    fail(m.str());
  }
  w.val[lane] = value;
  w.arg[lane] = arg;
  w.arrived |= 1u << lane;
  if (w.arrived != mask) {
    f.state = FState::AtWarp;
    f.file = file;
    f.line = line;
    to_scheduler(f, false);
    return f.result;
  }
  // The last lane completes the collective for everyone.
  if (kind == Collective::Op) {
    void* lanes[32];
    for (int l = 0; l < 32; ++l) lanes[l] = (mask & (1u << l)) ? reinterpret_cast<void*>(w.val[l]) : nullptr;
    try {
      op(lanes);
    } catch (const std::exception& e) {
      fail(e.what());
    }
  }
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask & (1u << l)) && w.val[l]) ballot |= 1ull << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask & (1u << l))) continue;
    const int base = (l / w.width) * w.width;
    int src = l;
    switch (kind) {
      case Collective::SyncWarp: break;
      case Collective::Shfl: src = base + ((w.arg[l] % w.width) + w.width) % w.width; break;
      case Collective::ShflUp: src = (l - base) - w.arg[l] >= 0 ? l - w.arg[l] : l; break;
      case Collective::ShflDown: src = (l - base) + w.arg[l] < w.width ? l + w.arg[l] : l; break;
      case Collective::ShflXor: {
        const int s = l ^ w.arg[l];
        src = (s >= 0 && s < base + w.width && s < 32) ? s : l;
        break;
      }
      default: break;
    }
    uint64_t res = w.val[src];
    if (kind == Collective::Shfl || kind == Collective::ShflUp || kind == Collective::ShflDown ||
        kind == Collective::ShflXor) {
      if (!(mask & (1u << src))) {
        fail("lane " + std::to_string(l) + " reads lane " + std::to_string(src) + ", which is not in the mask");
      }
    } else if (kind == Collective::Ballot) {
      res = ballot;
    } else if (kind == Collective::Any) {
      res = ballot != 0;
    } else if (kind == Collective::All) {
      res = ballot == mask;
    }
    Fiber& o = r.fibers[wi * 32 + l];
    o.result = res;
    if (l != lane) o.state = FState::Runnable;
  }
  w.arrived = 0;
  r.woke_warp = wi;
  return f.result;
}
}  // namespace

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line) {
  return collective(kind, mask, value, arg, width, file, line, nullptr, nullptr);
}

void warp_op(const char* name, WarpOp complete, unsigned mask, void* mine, const char* file, int line) {
  collective(Collective::Op, mask, reinterpret_cast<uint64_t>(mine), 0, 32, file, line, complete, name);
}

// cp.async: the copy happens at the wait that covers it; until then the
// destination holds 0xFF bytes, so a read before the wait sees NaNs.
void async_copy(void* dst, const void* src, int bytes, int src_bytes) {
  Fiber& f = *current_run->running;
  std::memset(dst, 0xFF, size_t(bytes));
  f.async.push_back({dst, src, bytes, src_bytes, -1});
}

void async_commit() {
  Fiber& f = *current_run->running;
  for (auto& c : f.async)
    if (c.group < 0) c.group = f.async_groups;
  ++f.async_groups;
}

void async_wait(int newest_pending) {
  Fiber& f = *current_run->running;
  const long done_below = f.async_groups - newest_pending;  // groups [0, done_below) complete
  std::vector<AsyncCopy> keep;
  for (const auto& c : f.async) {
    if (c.group >= 0 && c.group < done_below) {
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
      if (c.bytes > c.src_bytes) std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
    } else {
      keep.push_back(c);
    }
  }
  f.async.swap(keep);
}

void* dynamic_shared_memory() { return g_dynamic_shared.data(); }

// ---------------------------------------------------------------- host side

// Bytes of the __shared__ arrays declared in the kernel's own body (not in
// the device functions it calls): function-local statics whose mangled name
// nests in the kernel's ("_ZN...kernel...Ev" -> "_ZZN...kernel...EvE2As").
size_t static_shared_bytes(const void* kernel) {
  const auto it = g_static_shared.find(kernel);
  if (it != g_static_shared.end()) return it->second;
  size_t bytes = 0;
  const auto f = g_functions.find(reinterpret_cast<uintptr_t>(kernel));
  if (f != g_functions.end()) {
    const std::string prefix = "_ZZ" + f->second.substr(2) + "E";
    for (const auto& r : g_shared)
      if (r.name.compare(0, prefix.size(), prefix) == 0) bytes += r.n;
  }
  g_static_shared[kernel] = bytes;
  return bytes;
}

void launch(const LaunchSpec& spec, void (*body)(void*), void* ctx) {
  const auto& props = device_props();
  const dim3 g = spec.grid, b = spec.block;
  const uint64_t nthreads = uint64_t(b.x) * b.y * b.z;
  TORCH_CHECK(g.x >= 1 && g.y >= 1 && g.z >= 1 && b.x >= 1 && b.y >= 1 && b.z >= 1 &&
                  nthreads <= uint64_t(props.max_threads_per_block) && b.z <= unsigned(props.max_block_dim_z) &&
                  int64_t(g.x) <= props.max_grid_x && g.y <= unsigned(props.max_grid_yz) &&
                  g.z <= unsigned(props.max_grid_yz),
              "CUDA error: invalid configuration argument (convx.simt: kernel ", spec.kernel, ", grid ",
              coords({g.x, g.y, g.z}), ", block ", coords({b.x, b.y, b.z}), ")");
  TORCH_CHECK(spec.dynamic_shared <= props.max_dynamic_shared, "CUDA error: invalid argument (convx.simt: kernel ",
              spec.kernel, " asks for ", spec.dynamic_shared, " bytes of dynamic shared memory)");
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (!g_shared_scanned) scan_shared_objects();
  const size_t static_bytes = spec.kernel_address ? static_shared_bytes(spec.kernel_address) : 0;
  // nvcc refuses more than 48 KiB of static shared memory at compile time.
  TORCH_CHECK(static_bytes <= props.max_static_shared, "convx.simt: kernel ", spec.kernel, " declares ", static_bytes,
              " bytes of __shared__ arrays; the limit is ", props.max_static_shared, " (ptxas would refuse it)");
  TORCH_CHECK(static_bytes + spec.dynamic_shared <= props.max_dynamic_shared,
              "CUDA error: invalid argument (convx.simt: kernel ", spec.kernel, " needs ", static_bytes, " + ",
              spec.dynamic_shared, " bytes of shared memory)");
  {
    std::lock_guard<std::mutex> log_lock(g_log_mutex);
    if (g_log.size() >= kMaxLogged) g_log.erase(g_log.begin(), g_log.begin() + kMaxLogged / 2);
    g_log.push_back({spec.kernel, {g.x, g.y, g.z}, {b.x, b.y, b.z}, spec.dynamic_shared, static_bytes});
  }
  if (g_dynamic_shared.size() < spec.dynamic_shared) g_dynamic_shared.resize(spec.dynamic_shared);

  Run r;
  r.spec = &spec;
  r.body = body;
  r.ctx = ctx;
  r.nthreads = int(nthreads);
  r.fibers.resize(nthreads);
  r.warps.resize((nthreads + 31) / 32);
  r.rng.s = g_seed * 0x2545f4914f6cdd1dull + (++g_launch_count);
  for (int t = 0; t < r.nthreads; ++t) {
    Fiber& f = r.fibers[t];
    f.linear = t;
    f.ts.thread_idx = {unsigned(t % b.x), unsigned((t / b.x) % b.y), unsigned(t / (b.x * b.y))};
    f.ts.block_dim = b;
    f.ts.grid_dim = g;
  }
  std::vector<int> order(nthreads);
  Run* saved = current_run;
  current_run = &r;

  // Blocks in a random order: a full shuffle for grids up to 2^22 blocks, a
  // random affine permutation i -> (a i + c) mod n beyond.
  const uint64_t nblocks = uint64_t(g.x) * g.y * g.z;
  std::vector<uint32_t> perm;
  uint64_t mul = 1, add = 0;
  if (nblocks <= (1u << 22)) {
    perm.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) perm[i] = uint32_t(i);
    for (uint64_t i = nblocks - 1; i > 0; --i) std::swap(perm[i], perm[r.rng.below(i + 1)]);
  } else {
    add = r.rng.below(nblocks);
    do mul = r.rng.below(nblocks - 1) + 1;
    while (std::gcd(mul, nblocks) != 1);
  }
  bool ok = true;
  for (uint64_t i = 0; i < nblocks && ok; ++i) {
    const uint64_t id = perm.empty() ? (unsigned __int128)(mul) * i % nblocks + add : perm[i];
    const uint64_t bid = id % nblocks;
    r.block_idx = {unsigned(bid % g.x), unsigned((bid / g.x) % g.y), unsigned(bid / (uint64_t(g.x) * g.y))};
    ok = run_block(r, order);
  }
  if (!ok) abandon_block(r);
  current_run = saved;
  if (!ok) TORCH_CHECK(false, r.error);
}

const char* intern_kernel_name(const char* pretty) {
  // g++: "const char* simt::kernel_name() [with auto Kernel = NAME]"
  std::string n(pretty);
  const auto at = n.find("Kernel = ");
  if (at != std::string::npos) n = n.substr(at + 9);
  if (!n.empty() && n.back() == ']') n.pop_back();
  for (const char* prefix : {"convx::cuda::{anonymous}::", "convx::cuda::"}) {
    for (auto p = n.find(prefix); p != std::string::npos; p = n.find(prefix)) n.erase(p, std::strlen(prefix));
  }
  static std::mutex m;
  static std::vector<std::unique_ptr<std::string>> names;  // never freed: the log points into them
  std::lock_guard<std::mutex> lock(m);
  names.push_back(std::make_unique<std::string>(n));
  return names.back()->c_str();
}

// ---------------------------------------------------------------- log and options (runtime.h)

std::vector<LaunchRecord> launches() {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  return g_log;
}

void clear_launches() {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  g_log.clear();
}

void set_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_seed = seed;
  g_launch_count = 0;
}

size_t shared_objects() {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (!g_shared_scanned) scan_shared_objects();
  return g_shared.size();
}

}  // namespace simt
