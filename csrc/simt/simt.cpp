// The SIMT simulator's scheduler: fibers, barriers, warp collectives (see simt.h).
#include "simt.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__linux__)
#define LRC_SIMT_AVAILABLE 1
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__SANITIZE_ADDRESS__)  // AddressSanitizer builds: see run_cta
#include <sanitizer/asan_interface.h>
#endif

namespace simt {

#if LRC_SIMT_AVAILABLE

// lrc_simt_switch(save, next): saves the callee-saved registers, the SSE and x87 control words
// and the stack pointer into *save, then resumes the context whose stack pointer is `next`.
extern "C" void lrc_simt_switch(void** save, void* next);
asm(R"(
  .pushsection .text
  .globl lrc_simt_switch
  .hidden lrc_simt_switch
  .type lrc_simt_switch, @function
lrc_simt_switch:
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
  .size lrc_simt_switch, .-lrc_simt_switch
  .popsection
)");

namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = size_t{128} << 10;  // per thread, plus a guard page below it

enum class Op { kBallot, kMatch, kShfl, kShflUp, kSyncWarp };

const char* op_name(Op op) {
  switch (op) {
    case Op::kBallot: return "__ballot_sync";
    case Op::kMatch: return "__match_any_sync";
    case Op::kShfl: return "__shfl_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    default: return "__syncwarp";
  }
}

// Operations waited for and their split by the phase each was made in.
struct Path {
  uint64_t total = 0;
  uint64_t by_phase[kMaxPhases] = {};
  void count(int phase) {
    ++total;
    ++by_phase[phase];
  }
  void add(const Path& o) {
    total += o.total;
    for (int i = 0; i < kMaxPhases; ++i) by_phase[i] += o.by_phase[i];
  }
  // Keeps the longer of this and p (p on a tie when on_tie).
  void keep_longer(const Path& p, bool on_tie) {
    if (p.total > total || (on_tie && p.total == total)) *this = p;
  }
};

// The two costs Profile reports: the critical path (with the scopes) and the strict one.
struct Paths {
  Path critical, strict;
  void add(const Paths& o) {
    critical.add(o.critical);
    strict.add(o.strict);
  }
  void keep_longer(const Paths& p, bool on_tie) {
    critical.keep_longer(p.critical, on_tie);
    strict.keep_longer(p.strict, on_tie);
  }
  void add_to(Profile& profile) const {
    profile.critical_ops += critical.total;
    profile.strict_ops += strict.total;
    for (int i = 0; i < kMaxPhases; ++i) {
      profile.phase_ops[i] += critical.by_phase[i];
      profile.phase_strict[i] += strict.by_phase[i];
    }
  }
};

struct Fiber {
  void* sp = nullptr;
  Paths waited;         // operations waited for since the CTA's last barrier (Profile)
  uint64_t memory = 0;  // global memory operations since then
  int phase = 0;
  int independent = 0, unused = 0;  // depth of the scopes
  bool group_waited = false;        // the current independent-loads scope has counted its wait
  void count(bool waits, bool atomic) {
    if (!waits) return;
    waited.strict.count(phase);
    if (atomic && unused > 0) return;
    if (!atomic && independent > 0) {
      if (group_waited) return;
      group_waited = true;
    }
    waited.critical.count(phase);
  }
};

struct WarpSlots {
  int arrived = 0;
  Op op[kWarp];
  uint64_t value[kWarp];
  int64_t arg[kWarp];
  uint64_t result[kWarp];
};

// The CTAs of one cluster meet here; a CTA that finishes or fails "departs", after which a
// barrier that has not completed can never complete.
// `cost` is the arriving CTA's paths since the last cluster barrier; the cluster's paths grow
// by the longest of them at each barrier (and at the end).
struct ClusterBarrier {
  std::mutex m;
  std::condition_variable cv;
  int size = 1, arrived = 0;
  uint64_t generation = 0;
  bool broken = false;
  std::string why;
  Paths interval, final;  // the longest paths of the CTAs since the last barrier, and at the end
  Profile profile;

  bool arrive_and_wait(const Paths& cost) {
    std::unique_lock<std::mutex> lock(m);
    if (broken) return false;
    const uint64_t g = generation;
    interval.keep_longer(cost, false);
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      interval.add_to(profile);
      ++profile.cluster_barriers;
      interval = Paths{};
      cv.notify_all();
      return true;
    }
    cv.wait(lock, [&] { return generation != g || broken; });
    return generation != g;
  }
  void depart(const std::string& reason, const Paths& cost, uint64_t block_barriers, uint64_t total_ops) {
    std::lock_guard<std::mutex> lock(m);
    final.keep_longer(cost, true);
    profile.block_barriers = std::max(profile.block_barriers, block_barriers);
    profile.total_ops += total_ops;
    if (!broken) {
      broken = true;
      why = reason;
    }
    cv.notify_all();
  }
};

struct Rng {  // splitmix64
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

struct Cta {
  Dim3 block_idx, block_dim, grid_dim;
  int n = 0;
  std::vector<Fiber> fibers;
  std::vector<WarpSlots> warps;
  std::vector<int> runnable;
  size_t head = 0;  // runnable[head..] in in-order mode
  int current = -1;
  void* scheduler_sp = nullptr;
  int at_block = 0, at_cluster = 0, done = 0;
  Paths path;  // since the last cluster barrier
  uint64_t block_barriers = 0, total_ops = 0;
  bool randomised = false;
  Rng rng{0};
  ClusterBarrier* cluster = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
};

thread_local Cta* tl_cta = nullptr;
thread_local uint64_t tl_default_seed = 0;
thread_local std::vector<Profile>* tl_profile_sink = nullptr;

Cta& cta() { return *tl_cta; }

// Ends an interval between barriers: the CTA waited for its busiest thread.
void close_interval(Cta& c) {
  if (c.fibers.empty()) return;
  Paths longest = c.fibers.front().waited;
  for (Fiber& f : c.fibers) {
    longest.keep_longer(f.waited, false);
    c.total_ops += f.memory;
    f.waited = Paths{};
    f.memory = 0;
  }
  c.path.add(longest);
}

void make_runnable(Cta& c, int t) { c.runnable.push_back(t); }

int pick(Cta& c) {
  if (!c.randomised) {
    if (c.head == c.runnable.size()) {
      c.runnable.clear();
      c.head = 0;
      return -1;
    }
    return c.runnable[c.head++];
  }
  if (c.runnable.empty()) return -1;
  const size_t i = c.rng.next() % c.runnable.size();
  const int t = c.runnable[i];
  c.runnable[i] = c.runnable.back();
  c.runnable.pop_back();
  return t;
}

// Back to the scheduler; returns when this fiber is resumed.
void suspend() {
  Cta& c = cta();
  lrc_simt_switch(&c.fibers[c.current].sp, c.scheduler_sp);
}

// With a seed, one memory access in 8 lets another thread run first (an interleaving point).
void maybe_switch(Cta& c) {
  if (!c.randomised || (c.rng.next() & 7) != 0) return;
  make_runnable(c, c.current);
  suspend();
}

// Stops the launch: records the error and never resumes this fiber.
[[noreturn]] void fail(const std::string& what) {
  Cta& c = cta();
  if (c.error.empty()) c.error = what;
  suspend();
  std::abort();  // unreachable: a failed fiber is never resumed
}

std::string where(const Cta& c) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "CTA %u, thread %d", c.block_idx.x, c.current);
  return buf;
}

void fiber_main() {
  Cta& c = cta();
  (*c.body)();
  Cta& c2 = cta();
  if (c2.at_block > 0 || c2.at_cluster > 0)
    fail(where(c2) + " exited while other threads of its CTA wait at a barrier");
  ++c2.done;
  suspend();
  std::abort();  // unreachable
}

// The first switch into a fiber "returns" into fiber_main on a fresh stack.
void* initial_sp(char* stack_top) {
  auto top = reinterpret_cast<uintptr_t>(stack_top) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;                                           // fake return address of fiber_main
  slot[-2] = reinterpret_cast<uint64_t>(&fiber_main);    // popped by `ret`
  for (int r = 3; r <= 8; ++r) slot[-r] = 0;              // rbp, rbx, r12..r15
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  auto* control = reinterpret_cast<char*>(slot - 9);
  std::memcpy(control, &mxcsr, 4);
  std::memcpy(control + 4, &fpucw, 2);
  return control;
}

std::string deadlock_report(const Cta& c) {
  int at_warp = 0;
  std::string partial;
  for (size_t w = 0; w < c.warps.size(); ++w) {
    if (c.warps[w].arrived == 0) continue;
    at_warp += c.warps[w].arrived;
    if (partial.empty())
      partial = "; warp " + std::to_string(w) + " has " + std::to_string(c.warps[w].arrived) + " of 32 lanes at " +
                op_name(c.warps[w].op[0]);
  }
  return "deadlock in CTA " + std::to_string(c.block_idx.x) + ": " + std::to_string(c.at_block) +
         " threads at __syncthreads, " + std::to_string(c.at_cluster) + " at a cluster barrier, " +
         std::to_string(at_warp) + " at warp collectives, " + std::to_string(c.done) + " exited" + partial;
}

void run_cta(Cta& c) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t per = kStackBytes + page;
  c.stacks_bytes = per * static_cast<size_t>(c.n);
  void* mem = mmap(nullptr, c.stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    c.error = "could not map the fiber stacks";
    c.cluster->depart(c.error, Paths{}, 0, 0);
    return;
  }
  c.stacks = static_cast<char*>(mem);
#if defined(__SANITIZE_ADDRESS__)
  // A mapping at an address an earlier CTA's fiber stacks used keeps their stale redzones.
  ASAN_UNPOISON_MEMORY_REGION(mem, c.stacks_bytes);
#endif
  c.fibers.assign(c.n, Fiber{});
  c.warps.assign((c.n + kWarp - 1) / kWarp, WarpSlots{});
  for (int t = 0; t < c.n; ++t) {
    char* base = c.stacks + per * t;
    mprotect(base, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    c.fibers[t].sp = initial_sp(base + per);
    c.runnable.push_back(t);
  }
  tl_cta = &c;
  for (;;) {
    const int t = pick(c);
    if (t < 0) break;
    c.current = t;
    lrc_simt_switch(&c.scheduler_sp, c.fibers[t].sp);
    if (!c.error.empty()) break;
  }
  if (c.error.empty() && c.done != c.n) c.error = deadlock_report(c);
  close_interval(c);
  tl_cta = nullptr;
  munmap(c.stacks, c.stacks_bytes);
  c.cluster->depart(c.error.empty() ? "CTA " + std::to_string(c.block_idx.x) + " finished" : c.error, c.path,
                    c.block_barriers, c.total_ops);
}

void warp_arrive(Op op, uint32_t mask, uint64_t value, int64_t arg) {
  Cta& c = cta();
  const int t = c.current, lane = t % kWarp;
  WarpSlots& w = c.warps[t / kWarp];
  if (mask != 0xffffffffu) fail(where(c) + ": " + op_name(op) + " with a partial mask is not simulated");
  w.op[lane] = op;
  w.value[lane] = value;
  w.arg[lane] = arg;
  if (++w.arrived < kWarp) {
    suspend();
    return;
  }
  w.arrived = 0;
  for (int l = 0; l < kWarp; ++l)
    if (w.op[l] != op)
      fail(where(c) + ": lanes of one warp met at different collectives (" + op_name(op) + " and " + op_name(w.op[l]) +
           ")");
  for (int l = 0; l < kWarp; ++l) {
    uint64_t r = 0;
    switch (op) {
      case Op::kBallot:
        for (int m = 0; m < kWarp; ++m) r |= static_cast<uint64_t>(w.value[m] != 0) << m;
        break;
      case Op::kMatch:
        for (int m = 0; m < kWarp; ++m) r |= static_cast<uint64_t>(w.value[m] == w.value[l]) << m;
        break;
      case Op::kShfl:
        r = w.value[((w.arg[l] % kWarp) + kWarp) % kWarp];
        break;
      case Op::kShflUp:
        r = l >= w.arg[l] ? w.value[l - w.arg[l]] : w.value[l];
        break;
      case Op::kSyncWarp:
        break;
    }
    w.result[l] = r;
  }
  const int first = t - lane;
  for (int l = 0; l < kWarp; ++l)
    if (first + l != t) make_runnable(c, first + l);
  if (c.randomised) {  // let the others run first sometimes
    make_runnable(c, t);
    suspend();
  }
}

// Every other thread of the CTA resumes after a barrier; with a seed this one takes its turn too.
void release_all(Cta& c) {
  for (int t = 0; t < c.n; ++t)
    if (t != c.current) make_runnable(c, t);
  if (c.randomised) {
    make_runnable(c, c.current);
    suspend();
  }
}

uint64_t warp_collective(Op op, uint32_t mask, uint64_t value, int64_t arg) {
  cta().fibers[cta().current].count(true, false);
  warp_arrive(op, mask, value, arg);
  Cta& c = cta();
  return c.warps[c.current / kWarp].result[c.current % kWarp];
}

}  // namespace

bool available() { return true; }

void set_default_seed(uint64_t seed) { tl_default_seed = seed; }
uint64_t default_seed() { return tl_default_seed; }
void set_profile_sink(std::vector<Profile>* sink) { tl_profile_sink = sink; }
std::vector<Profile>* profile_sink() { return tl_profile_sink; }

Dim3 thread_idx() {
  Dim3 d;
  d.x = static_cast<unsigned>(cta().current);
  return d;
}
Dim3 block_idx() { return cta().block_idx; }
Dim3 block_dim() { return cta().block_dim; }
Dim3 grid_dim() { return cta().grid_dim; }

namespace {

// Counts this thread in at a CTA-wide barrier (`arrived` its counter, `other` the other kind's).
// Returns true for the last thread to arrive, after closing the interval; the others are
// suspended until released. Threads at the other kind of barrier, or exited ones, mean the
// barrier can never complete.
bool arrive(Cta& c, int& arrived, int other, const char* name) {
  if (other > 0 || c.done > 0)
    fail(where(c) + " reached " + name + " while other threads of its CTA wait at another barrier or exited");
  if (++arrived < c.n) {
    suspend();
    return false;
  }
  arrived = 0;
  close_interval(c);
  return true;
}

}  // namespace

void sync_block() {
  Cta& c = cta();
  if (!arrive(c, c.at_block, c.at_cluster, "__syncthreads")) return;
  ++c.block_barriers;
  release_all(c);
}

void sync_cluster() {
  Cta& c = cta();
  if (!arrive(c, c.at_cluster, c.at_block, "a cluster barrier")) return;
  const Paths path = c.path;
  c.path = Paths{};
  if (!c.cluster->arrive_and_wait(path)) {
    const std::string why = c.cluster->why;
    fail("cluster barrier of CTA " + std::to_string(c.block_idx.x) + " cannot complete: " + why);
  }
  release_all(c);
}

uint32_t ballot(uint32_t mask, bool predicate) {
  return static_cast<uint32_t>(warp_collective(Op::kBallot, mask, predicate, 0));
}
uint32_t match_any(uint32_t mask, uint64_t value) {
  return static_cast<uint32_t>(warp_collective(Op::kMatch, mask, value, 0));
}
// A warp barrier waits for the warp's lanes, a few cycles, not for memory: not counted.
void sync_warp(uint32_t mask) { warp_arrive(Op::kSyncWarp, mask, 0, 0); }
uint64_t shfl(uint32_t mask, uint64_t value, int src_lane) { return warp_collective(Op::kShfl, mask, value, src_lane); }
uint64_t shfl_up(uint32_t mask, uint64_t value, unsigned delta) {
  return warp_collective(Op::kShflUp, mask, value, delta);
}

void memory_op(bool waits, bool atomic) {
  Cta* c = tl_cta;
  if (c == nullptr) return;
  Fiber& f = c->fibers[c->current];
  f.count(waits, atomic);
  ++f.memory;
  maybe_switch(*c);
}

void shared_op() {
  if (tl_cta != nullptr) maybe_switch(*tl_cta);
}

namespace {
Fiber* current_fiber() { return tl_cta == nullptr ? nullptr : &tl_cta->fibers[tl_cta->current]; }
}  // namespace

void begin_independent_loads() {
  if (Fiber* f = current_fiber(); f != nullptr && f->independent++ == 0) f->group_waited = false;
}
void end_independent_loads() {
  if (Fiber* f = current_fiber()) --f->independent;
}
void begin_unused_results() {
  if (Fiber* f = current_fiber()) ++f->unused;
}
void end_unused_results() {
  if (Fiber* f = current_fiber()) --f->unused;
}

void set_phase(int phase) {
  Cta* c = tl_cta;
  if (c == nullptr) return;
  if (phase < 0 || phase >= kMaxPhases) fail(where(*c) + ": phase " + std::to_string(phase) + " out of range");
  c->fibers[c->current].phase = phase;
}

std::string launch(const LaunchConfig& config, const std::function<void()>& body) {
  const unsigned cluster = config.cluster;
  if (tl_cta != nullptr) return "simt::launch called from inside a kernel";
  if (config.block.x == 0 || config.block.x % kWarp != 0 || config.block.y != 1 || config.block.z != 1)
    return "simt: CTAs must be 1-D with a multiple of 32 threads";
  if (cluster == 0 || config.grid.x % cluster != 0 || config.grid.y != 1 || config.grid.z != 1)
    return "simt: the grid must be 1-D and a multiple of the cluster size";
  Rng seeds{config.seed};
  if (config.profile != nullptr) config.profile->assign(config.grid.x / cluster, Profile{});
  for (unsigned first = 0; first < config.grid.x; first += cluster) {
    ClusterBarrier barrier;
    barrier.size = static_cast<int>(cluster);
    std::vector<Cta> ctas(cluster);
    for (unsigned r = 0; r < cluster; ++r) {
      Cta& c = ctas[r];
      c.block_idx.x = first + r;
      c.block_dim = config.block;
      c.grid_dim = config.grid;
      c.n = static_cast<int>(config.block.x);
      c.randomised = config.seed != 0;
      c.rng.s = seeds.next();
      c.cluster = &barrier;
      c.body = &body;
    }
    if (cluster == 1) {
      run_cta(ctas[0]);
    } else {
      std::vector<std::thread> threads;
      for (unsigned r = 0; r < cluster; ++r) threads.emplace_back([&ctas, r] { run_cta(ctas[r]); });
      for (auto& th : threads) th.join();
    }
    for (const Cta& c : ctas)
      if (!c.error.empty()) return c.error;
    if (config.profile != nullptr) {
      Profile& p = (*config.profile)[first / cluster];
      p = barrier.profile;
      barrier.final.add_to(p);
    }
  }
  return "";
}

#else  // not x86-64 Linux

bool available() { return false; }
std::string launch(const LaunchConfig&, const std::function<void()>&) {
  return "the SIMT simulator runs on x86-64 Linux only";
}
void set_default_seed(uint64_t) {}
uint64_t default_seed() { return 0; }
void set_profile_sink(std::vector<Profile>*) {}
std::vector<Profile>* profile_sink() { return nullptr; }
Dim3 thread_idx() { return {}; }
Dim3 block_idx() { return {}; }
Dim3 block_dim() { return {}; }
Dim3 grid_dim() { return {}; }
void sync_block() {}
void sync_cluster() {}
uint32_t ballot(uint32_t, bool) { return 0; }
void sync_warp(uint32_t) {}
uint32_t match_any(uint32_t, uint64_t) { return 0; }
uint64_t shfl(uint32_t, uint64_t, int) { return 0; }
uint64_t shfl_up(uint32_t, uint64_t, unsigned) { return 0; }
void memory_op(bool, bool) {}
void shared_op() {}
void begin_independent_loads() {}
void end_independent_loads() {}
void begin_unused_results() {}
void end_unused_results() {}
void set_phase(int) {}

#endif

}  // namespace simt
