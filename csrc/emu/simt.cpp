// The emulator's runtime: fibers and their context switch, the per-block scheduler, and grid launch.
#include "emu/simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Under AddressSanitizer (tools/sanitize.sh) every fiber switch is announced, so ASan knows which stack is live and
// does not take the fiber's frames for a stack overflow or stale poison.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CK_EMU_ASAN 1
#else
#define CK_EMU_ASAN 0
#endif

namespace ck_emu {

thread_local ThreadState* g_thread = nullptr;
thread_local BlockState* g_block = nullptr;

namespace {

// ---------------------------------------------------------------------------------------------------------
// Context switching. On x86-64 a fiber switch saves the callee-saved registers, MXCSR and the x87 control
// word on the old stack and pops them from the new one (tens of ns; ucontext would make a syscall each time).
#if defined(__x86_64__)
extern "C" void ck_emu_switch(void** save_sp, void* load_sp);
extern "C" void ck_emu_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl ck_emu_switch
  .hidden ck_emu_switch
  .type ck_emu_switch, @function
ck_emu_switch:
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
  .size ck_emu_switch, .-ck_emu_switch

  .p2align 4
  .globl ck_emu_trampoline
  .hidden ck_emu_trampoline
  .type ck_emu_trampoline, @function
ck_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size ck_emu_trampoline, .-ck_emu_trampoline
)");

struct Context {
  void* sp = nullptr;
};

void ctx_make(Context& c, char* stack, size_t size, void (*fn)(void*), void* arg) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  uint64_t* s = reinterpret_cast<uint64_t*>(top);
  s[-1] = reinterpret_cast<uint64_t>(&ck_emu_trampoline);  // popped by ret: the trampoline starts with rsp == top
  s[-2] = 0;                                               // rbp
  s[-3] = 0;                                               // rbx
  s[-4] = reinterpret_cast<uint64_t>(arg);                 // r12
  s[-5] = reinterpret_cast<uint64_t>(fn);                  // r13
  s[-6] = 0;                                               // r14
  s[-7] = 0;                                               // r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  uint64_t ctrl = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
  s[-8] = ctrl;
  c.sp = &s[-8];
}

inline void ctx_switch(Context& from, Context& to) { ck_emu_switch(&from.sp, to.sp); }

#else  // portable fallback
}  // namespace
}  // namespace ck_emu
#include <ucontext.h>
namespace ck_emu {
namespace {
struct Context {
  ucontext_t uc;
};
thread_local void (*t_entry_fn)(void*);  // the same for every fiber (Worker::fiber_main)
void entry_thunk(unsigned hi, unsigned lo) {
  t_entry_fn(reinterpret_cast<void*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}
void ctx_make(Context& c, char* stack, size_t size, void (*fn)(void*), void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  t_entry_fn = fn;
  // makecontext passes ints only: split the pointer in two.
  uintptr_t a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(entry_thunk), 2, unsigned(a >> 32), unsigned(a & 0xffffffffu));
}
inline void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------------------------------------------------
enum class St : uint8_t { runnable, barrier, warp, done };

struct Fiber {
  Context ctx;
  void* asan_fake = nullptr;  // ASan's saved fake stack while the fiber is switched out
  ThreadState ts;
  unsigned lin = 0;
  St st = St::runnable;
  bool started = false;
  const char* file = "";
  int line = 0;
  int bar_kind = 0, pred = 0, bar_result = 0;
  Collective op = Collective::syncwarp;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t value = 0, result = 0;
};

enum class Order { forward, reverse, random };

std::string where(const char* file, int line) {
  std::string f(file);
  return f + ":" + std::to_string(line);
}

const char* op_name(Collective op) {
  switch (op) {
    case Collective::shfl:
      return "__shfl_sync";
    case Collective::shfl_up:
      return "__shfl_up_sync";
    case Collective::shfl_down:
      return "__shfl_down_sync";
    case Collective::shfl_xor:
      return "__shfl_xor_sync";
    case Collective::ballot:
      return "__ballot_sync";
    case Collective::any:
      return "__any_sync";
    case Collective::all:
      return "__all_sync";
    case Collective::syncwarp:
      return "__syncwarp";
  }
  return "?";
}

size_t stack_bytes() {
  const char* e = std::getenv("CELLKERN_EMU_STACK_KB");
  long kb = e ? std::atol(e) : 256;
  return size_t(std::max(16L, kb)) * 1024;
}

// One per OS thread that runs blocks; keeps its fiber stacks across launches.
struct Worker {
  Context sched;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  size_t stack_size = 0, guard = 0;
  BlockState block{};
  std::vector<unsigned char> smem;
  Fiber* cur = nullptr;
  const void* sched_stack = nullptr;  // the scheduler's stack, learnt on the first switch (ASan only)
  size_t sched_stack_size = 0;
  bool stacks_dirty = false;  // a failed block left fibers mid-call: their stacks hold ASan redzone poison
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  const char* kernel = "";
  std::string launch_site;
  Order order = Order::forward;
  uint64_t seed = 0;

  ~Worker() {
    for (char* s : stacks) munmap(s, stack_size + guard);
  }

  void ensure_stacks(size_t n) {
    size_t want = stack_bytes();
    if (want != stack_size) {
      for (char* s : stacks) munmap(s, stack_size + guard);
      stacks.clear();
      stack_size = want;
      guard = size_t(sysconf(_SC_PAGESIZE));
    }
    while (stacks.size() < n) {
      void* m = mmap(nullptr, stack_size + guard, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("emulator: cannot map a fiber stack");
      mprotect(m, guard, PROT_NONE);  // overflowing a fiber stack faults instead of corrupting its neighbour
      stacks.push_back(static_cast<char*>(m));
    }
#if CK_EMU_ASAN
    if (stacks_dirty)
      for (char* st : stacks) ASAN_UNPOISON_MEMORY_REGION(st + guard, stack_size);
#endif
    stacks_dirty = false;
  }

  // A fiber's switch back to the scheduler (parking at a collective, or finishing when `done`).
  void to_scheduler(Fiber* f, bool done) {
#if CK_EMU_ASAN
    __sanitizer_start_switch_fiber(done ? nullptr : &f->asan_fake, sched_stack, sched_stack_size);
#endif
    ctx_switch(f->ctx, sched);
#if CK_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, &sched_stack, &sched_stack_size);
#endif
    (void)done;
  }

  // The scheduler's switch into fiber i until it parks or finishes.
  void to_fiber(unsigned i) {
#if CK_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stacks[i] + guard, stack_size);
#endif
    ctx_switch(sched, fibers[i].ctx);
#if CK_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  }

  [[noreturn]] void fail(const std::string& what) {
    std::ostringstream os;
    os << "emulator: " << what << " [kernel " << kernel << " launched at " << launch_site << ", block ("
       << block.block_idx.x << "," << block.block_idx.y << "," << block.block_idx.z << ")]";
    throw std::runtime_error(os.str());
  }

  std::string tid(const Fiber& f) const {
    std::ostringstream os;
    os << "thread (" << f.ts.thread_idx.x << "," << f.ts.thread_idx.y << "," << f.ts.thread_idx.z << ")";
    return os.str();
  }

  static void fiber_main(void* p);
  void run_block(uint64_t linear_block);
  bool resolve_warps(unsigned n);
  void resolve_barrier(unsigned n);
};

thread_local Worker* t_worker = nullptr;

Worker& this_worker() {
  static thread_local Worker w;
  return w;
}

// Not instrumented: its frame is abandoned, never returned from, so ASan would leave its redzones poisoned.
#if CK_EMU_ASAN
__attribute__((no_sanitize_address))
#endif
void Worker::fiber_main(void* p) {
  Worker* w = t_worker;
  Fiber* f = static_cast<Fiber*>(p);
#if CK_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack, &w->sched_stack_size);
#endif
  try {
    (*w->body)();
  } catch (...) {
    if (!w->error) w->error = std::current_exception();
  }
  f->st = St::done;
  w->to_scheduler(f, true);
  __builtin_unreachable();  // a finished fiber is never resumed
}

void Worker::run_block(uint64_t lb) {
  const dim3 gd = block.grid_dim, bd = block.block_dim;
  block.block_idx = {unsigned(lb % gd.x), unsigned((lb / gd.x) % gd.y), unsigned(lb / (uint64_t(gd.x) * gd.y))};
  const unsigned n = bd.x * bd.y * bd.z;
  // Shared memory starts as NaN/0xFF garbage, as on a GPU nothing initialises it.
  std::fill(smem.begin(), smem.end(), 0xFF);
  block.dynamic_smem = smem.empty() ? nullptr : smem.data();
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = fibers[i];
    f = Fiber{};
    f.lin = i;
    f.ts.thread_idx = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    ctx_make(f.ctx, stacks[i] + guard, stack_size, &Worker::fiber_main, &f);
  }
  std::vector<unsigned> ids(n);
  std::mt19937_64 rng(seed ^ (lb * 0x9E3779B97F4A7C15ull));
  g_block = &block;
  for (;;) {
    ids.clear();
    for (unsigned i = 0; i < n; ++i)
      if (fibers[i].st == St::runnable) ids.push_back(i);
    if (order == Order::reverse) std::reverse(ids.begin(), ids.end());
    if (order == Order::random) std::shuffle(ids.begin(), ids.end(), rng);
    for (unsigned i : ids) {
      cur = &fibers[i];
      g_thread = &cur->ts;
      to_fiber(i);
      if (error) {
        std::exception_ptr e = error;
        error = nullptr;
        std::rethrow_exception(e);
      }
    }
    if (resolve_warps(n)) continue;
    unsigned live = 0;
    for (unsigned i = 0; i < n; ++i) live += fibers[i].st != St::done;
    if (live == 0) return;
    resolve_barrier(n);
  }
}

// Releases every warp group whose lanes have all arrived at the same collective; true if any was released.
bool Worker::resolve_warps(unsigned n) {
  bool progressed = false;
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    const unsigned lanes = std::min(32u, n - w0);
    const unsigned exist = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    for (unsigned l = 0; l < lanes; ++l) {
      Fiber& f = fibers[w0 + l];
      if (f.st != St::warp) continue;
      const unsigned m = f.mask & exist;
      if (!(m >> l & 1u))
        fail(tid(f) + " calls " + op_name(f.op) + " at " + where(f.file, f.line) + " with a mask that excludes itself");
      bool ready = true;
      for (unsigned j = 0; j < lanes; ++j) {
        if (!(m >> j & 1u)) continue;
        Fiber& g = fibers[w0 + j];
        if (g.st == St::done)
          fail(tid(g) + " has exited, but " + tid(f) + " waits for it at " + op_name(f.op) + " at " +
               where(f.file, f.line) + " (its lane is in the mask)");
        if (g.st == St::runnable)
          fail("lanes of one warp pass different masks to " + std::string(op_name(f.op)) + " at " +
               where(f.file, f.line));
        if (g.st != St::warp) {
          ready = false;
          continue;
        }
        if (g.op != f.op)
          fail("lanes of one warp wait at different warp collectives: " + std::string(op_name(f.op)) + " at " +
               where(f.file, f.line) + " and " + op_name(g.op) + " at " + where(g.file, g.line));
        if ((g.mask & exist) != m)
          fail("lanes of one warp pass different masks to " + std::string(op_name(f.op)) + " at " +
               where(f.file, f.line));
      }
      if (!ready) continue;
      // Every lane in m has arrived: compute each lane's result.
      uint32_t votes = 0;
      for (unsigned j = 0; j < lanes; ++j)
        if ((m >> j & 1u) && fibers[w0 + j].value) votes |= 1u << j;
      for (unsigned j = 0; j < lanes; ++j) {
        if (!(m >> j & 1u)) continue;
        Fiber& g = fibers[w0 + j];
        const unsigned width = unsigned(g.width), base = j & ~(width - 1);
        long src = long(j);
        switch (g.op) {
          case Collective::shfl:
            src = long(base + (unsigned(g.arg) & (width - 1)));
            break;
          case Collective::shfl_up:
            src = (j - base) < unsigned(g.arg) ? long(j) : long(j) - g.arg;
            break;
          case Collective::shfl_down:
            src = (j - base) + unsigned(g.arg) >= width ? long(j) : long(j) + g.arg;
            break;
          case Collective::shfl_xor: {
            unsigned s = j ^ unsigned(g.arg);
            src = s >= base + width ? long(j) : long(s);
            break;
          }
          default:
            break;
        }
        switch (g.op) {
          case Collective::ballot:
            g.result = votes;
            break;
          case Collective::any:
            g.result = votes != 0;
            break;
          case Collective::all:
            g.result = votes == m;
            break;
          case Collective::syncwarp:
            g.result = 0;
            break;
          default:
            // Reading a lane outside the mask is undefined on a GPU: hand back poison (NaN / -1) so it shows.
            g.result =
                (src >= 0 && src < long(lanes) && (m >> src & 1u)) ? fibers[w0 + unsigned(src)].value : ~uint64_t(0);
        }
      }
      for (unsigned j = 0; j < lanes; ++j)
        if (m >> j & 1u) fibers[w0 + j].st = St::runnable;
      progressed = true;
    }
  }
  return progressed;
}

// No fiber can run and no warp group is complete: all live threads must wait at one __syncthreads.
void Worker::resolve_barrier(unsigned n) {
  const Fiber* at = nullptr;
  const Fiber* exited = nullptr;
  for (unsigned i = 0; i < n; ++i) {
    const Fiber& f = fibers[i];
    if (f.st == St::done) {
      if (!exited) exited = &f;
      continue;
    }
    if (f.st != St::barrier) {
      std::ostringstream os;
      os << "deadlock: " << tid(f) << " waits at " << op_name(f.op) << " at " << where(f.file, f.line)
         << " for lanes that will never arrive";
      for (unsigned j = 0; j < n; ++j)
        if (fibers[j].st == St::barrier) {
          os << "; " << tid(fibers[j]) << " waits at __syncthreads() at " << where(fibers[j].file, fibers[j].line);
          break;
        }
      fail(os.str());
    }
    if (!at) at = &f;
    if (f.file != at->file || f.line != at->line)
      fail("threads of one block wait at different barriers: " + tid(*at) + " at " + where(at->file, at->line) + ", " +
           tid(f) + " at " + where(f.file, f.line));
  }
  if (exited)
    fail(tid(*exited) + " returned before reaching __syncthreads() at " + where(at->file, at->line) +
         ", where other threads of its block wait (an early return before a barrier)");
  int count = 0, live = 0;
  for (unsigned i = 0; i < n; ++i) {
    count += fibers[i].pred != 0;
    ++live;
  }
  const int kind = at->bar_kind;
  const int result = kind == 1 ? count : kind == 2 ? (count == live) : kind == 3 ? (count > 0) : 0;
  for (unsigned i = 0; i < n; ++i) {
    fibers[i].bar_result = result;
    fibers[i].st = St::runnable;
  }
}

Order parse_order(uint64_t& seed) {
  const char* e = std::getenv("CELLKERN_EMU_ORDER");
  std::string s = e ? e : "forward";
  seed = 0;
  if (s == "forward" || s.empty()) return Order::forward;
  if (s == "reverse") return Order::reverse;
  if (s.rfind("random", 0) == 0) {
    if (s.size() > 7 && s[6] == ':') seed = std::strtoull(s.c_str() + 7, nullptr, 10);
    return Order::random;
  }
  throw std::runtime_error("CELLKERN_EMU_ORDER must be forward, reverse, random or random:<seed>, got '" + s + "'");
}

void check_config(const char* kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem) {
  std::ostringstream os;
  uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > 1024)
    os << "block (" << block.x << "," << block.y << "," << block.z << ") is not a valid CUDA block (1..1024 threads, "
       << "z <= 64)";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    os << "grid (" << grid.x << "," << grid.y << "," << grid.z
       << ") is not a valid CUDA grid (x < 2^31, y and z <= 65535)";
  else if (smem > 48 * 1024)
    os << smem << " bytes of dynamic shared memory exceed the 48 KiB a launch gets without opting in";
  if (!os.str().empty())
    throw std::runtime_error("emulator: invalid launch of " + std::string(kernel) + " at " + where(file, line) + ": " +
                             os.str());
}

// Worker threads live for the whole process so their fiber stacks are mapped once, not per launch.
class ThreadPool {
 public:
  // Runs work() on the calling thread and on n - 1 pool threads; returns when all have finished.
  void run(unsigned n, const std::function<void()>& work) {
    std::lock_guard<std::mutex> one_launch_at_a_time(launch_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (threads_ < n - 1) {
        std::thread(&ThreadPool::loop, this, threads_++).detach();  // never joined: lives until exit
      }
      job_ = &work;
      want_ = n - 1;
      active_ = n - 1;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  void loop(unsigned index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= want_) continue;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex launch_mu_, mu_;
  std::condition_variable cv_, done_;
  const std::function<void()>* job_ = nullptr;
  unsigned threads_ = 0, want_ = 0, active_ = 0;
  uint64_t generation_ = 0;
};

ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool;  // leaked on purpose: detached threads may outlive static destructors
  return *p;
}

}  // namespace

// Called by a fiber: park at a warp collective until its group is released by the scheduler.
uint64_t warp_collective(Collective op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  Worker* w = t_worker;
  Fiber* f = w->cur;
  if (width <= 0 || width > 32 || (width & (width - 1)))
    w->fail(w->tid(*f) + " calls " + op_name(op) + " at " + where(file, line) + " with width " + std::to_string(width) +
            " (must be a power of two up to 32)");
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  f->file = file;
  f->line = line;
  f->st = St::warp;
  w->to_scheduler(f, false);
  return f->result;
}

int block_barrier(int kind, int predicate, const char* file, int line) {
  Worker* w = t_worker;
  Fiber* f = w->cur;
  f->bar_kind = kind;
  f->pred = predicate;
  f->file = file;
  f->line = line;
  f->st = St::barrier;
  w->to_scheduler(f, false);
  return f->bar_result;
}

unsigned active_mask() {
  Worker* w = t_worker;
  const unsigned base = w->cur->lin & ~31u;
  const unsigned n = w->block.block_dim.x * w->block.block_dim.y * w->block.block_dim.z;
  unsigned m = 0;
  for (unsigned j = 0; j < 32 && base + j < n; ++j)
    if (w->fibers[base + j].st != St::done) m |= 1u << j;
  return m;
}

void run_grid(const char* kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  if (t_worker) throw std::runtime_error("emulator: kernel launch from inside a kernel is not supported");
  check_config(kernel, file, line, grid, block, smem);
  uint64_t seed;
  const Order order = parse_order(seed);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const unsigned threads = block.x * block.y * block.z;
  unsigned nworkers = std::max(1u, std::thread::hardware_concurrency());
  if (const char* e = std::getenv("CELLKERN_EMU_WORKERS")) nworkers = unsigned(std::max(1L, std::atol(e)));
  nworkers = unsigned(std::min<uint64_t>(nworkers, nblocks));

  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::exception_ptr first_error;
  auto work = [&] {
    Worker& w = this_worker();
    try {
      w.ensure_stacks(threads);
      w.fibers.resize(std::max<size_t>(w.fibers.size(), threads));
      w.smem.assign(smem, 0);
      w.block = BlockState{};
      w.block.grid_dim = grid;
      w.block.block_dim = block;
      w.body = &body;
      w.kernel = kernel;
      w.launch_site = where(file, line);
      w.order = order;
      w.seed = seed;
      w.error = nullptr;
      t_worker = &w;
      for (;;) {
        uint64_t b = next.fetch_add(1);
        if (b >= nblocks || failed.load()) break;
        w.run_block(b);
      }
    } catch (...) {
      w.stacks_dirty = true;
      std::lock_guard<std::mutex> lock(mu);
      if (!first_error) first_error = std::current_exception();
      failed = true;
    }
    t_worker = nullptr;
    g_thread = nullptr;
    g_block = nullptr;
  };
  if (nworkers == 1)
    work();
  else
    pool().run(nworkers, work);
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace ck_emu
