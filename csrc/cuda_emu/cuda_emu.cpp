// The emulated device: runs a grid's blocks one after another, each block's threads as host
// threads with a real barrier between them. See cuda_emu.h for the model.
#include "cuda_emu/cuda_emu.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {

namespace {

constexpr std::size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;
constexpr std::size_t kSmemAlign = 128;

// Thrown in a waiting thread when another thread of its block faulted: it unwinds the
// kernel body; the block's first fault is what the launch reports.
struct Aborted {};

// The sequence of warp-collective calls of one warp, kept until all its lanes made each.
struct WarpLog {
  struct Call {
    const char* op;
    const void* ptr;
    unsigned ldm;
    std::uint32_t value;
    unsigned count;
    unsigned first_lane;
  };
  std::mutex m;
  std::deque<Call> calls;
  std::uint64_t base = 0;  // sequence number of calls.front()
};

struct Launch;

struct ThreadCtx {
  Launch* launch = nullptr;
  unsigned tid = 0;               // linear thread index in the block
  std::uint64_t collective_seq = 0;
};

thread_local ThreadCtx* current = nullptr;

ThreadCtx& ctx(const char* what) {
  if (current == nullptr) throw Fault(std::string(what) + " called outside an emulated kernel");
  return *current;
}

struct Launch {
  const char* name;
  dim3 grid, block;
  std::size_t smem;
  Schedule schedule;
  const std::function<void()>* body;
  unsigned nthreads;
  // Dynamic shared memory plus the guard zone, 128-byte aligned like the hardware's.
  std::vector<unsigned char> storage;
  unsigned char* arena = nullptr;
  std::size_t arena_size = 0;
  std::vector<std::unique_ptr<WarpLog>> warps;

  std::mutex m;
  // Workers wait on start_cv for the next block (or shutdown); the launcher on done_cv.
  std::condition_variable start_cv, done_cv;
  std::uint64_t block_serial = 0;
  uint3 block_idx{0, 0, 0};
  unsigned running = 0;
  bool shutdown = false;
  // Barrier state of the current block.
  std::condition_variable barrier_cv;
  unsigned arrived = 0, exited = 0;
  std::uint64_t phase = 0;
  // Serialized schedule: only the thread at position turn_pos of this phase's order runs.
  std::vector<std::unique_ptr<std::condition_variable>> turn_cv;
  unsigned turn_pos = 0;
  // The block's first fault.
  bool failed = false;
  std::string error;

  unsigned turn_tid() const {  // forward order in even phases, reversed in odd ones
    return phase % 2 == 0 ? turn_pos : nthreads - 1 - turn_pos;
  }

  // Caller holds m.
  void fail(unsigned tid, const std::string& msg) {
    if (failed) return;
    failed = true;
    const unsigned bx = block.x, by = block.y;
    error = "block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + "," +
            std::to_string(block_idx.z) + ") thread (" + std::to_string(tid % bx) + "," +
            std::to_string(tid / bx % by) + "," + std::to_string(tid / (bx * by)) + "): " + msg;
    barrier_cv.notify_all();
    for (auto& cv : turn_cv) cv->notify_all();
  }

  // Serialized schedule: hand the turn to the next position (caller holds m).
  void pass_turn() {
    if (schedule != Schedule::kSerialized) return;
    if (turn_pos + 1 < nthreads) {
      ++turn_pos;
      turn_cv[turn_tid()]->notify_one();
    }
  }

  void wait_turn(std::unique_lock<std::mutex>& lk, unsigned tid, std::uint64_t want_phase) {
    turn_cv[tid]->wait(lk, [&] { return failed || (phase == want_phase && turn_tid() == tid); });
    if (failed) throw Aborted{};
  }

  void arrive(unsigned tid) {
    std::unique_lock<std::mutex> lk(m);
    if (failed) throw Aborted{};
    if (exited > 0) {
      fail(tid, "__syncthreads() reached after " + std::to_string(exited) +
                    " thread(s) of the block exited (a barrier in divergent code)");
      throw Aborted{};
    }
    const std::uint64_t my_phase = phase;
    if (++arrived == nthreads) {
      arrived = 0;
      ++phase;
      turn_pos = 0;
      if (schedule == Schedule::kSerialized) {
        turn_cv[turn_tid()]->notify_one();
      } else {
        barrier_cv.notify_all();
        return;
      }
    } else {
      pass_turn();
    }
    if (schedule == Schedule::kSerialized) {
      wait_turn(lk, tid, my_phase + 1);
    } else {
      barrier_cv.wait(lk, [&] { return failed || phase != my_phase; });
      if (failed) throw Aborted{};
    }
  }

  void exit_thread(unsigned tid) {
    std::unique_lock<std::mutex> lk(m);
    if (failed) return;
    if (arrived > 0) {
      fail(tid, "thread exited while " + std::to_string(arrived) +
                    " thread(s) of the block wait at __syncthreads() (a barrier in divergent code)");
      return;
    }
    ++exited;
    pass_turn();
  }

  void worker(unsigned tid) {
    ThreadCtx tc;
    tc.launch = this;
    tc.tid = tid;
    current = &tc;
    threadIdx = uint3{tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m);
        start_cv.wait(lk, [&] { return shutdown || block_serial != seen; });
        if (shutdown) break;
        seen = block_serial;
        blockIdx = block_idx;
      }
      tc.collective_seq = 0;
      try {
        if (schedule == Schedule::kSerialized) {
          std::unique_lock<std::mutex> lk(m);
          wait_turn(lk, tid, 0);
        }
        (*body)();
        exit_thread(tid);
      } catch (const Aborted&) {
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lk(m);
        fail(tid, e.what());
      }
      std::lock_guard<std::mutex> lk(m);
      if (--running == 0) done_cv.notify_one();
    }
    current = nullptr;
  }

  // After a block: every warp-collective call made by all lanes, the guard zone intact.
  void check_block() {
    for (std::size_t w = 0; w < warps.size(); ++w) {
      WarpLog& log = *warps[w];
      if (!log.calls.empty()) {
        const auto& c = log.calls.front();
        fail(unsigned(w * warpSize + c.first_lane),
             std::string(c.op) + " was made by " + std::to_string(c.count) +
                 " lane(s) of warp " + std::to_string(w) +
                 " only (wmma calls are warp-collective: every lane must make them)");
        return;
      }
    }
    for (std::size_t i = smem; i < arena_size; ++i)
      if (arena[i] != kGuardByte) {
        fail(0, "wrote past the end of its " + std::to_string(smem) +
                    " bytes of dynamic shared memory (at byte " + std::to_string(i) + ")");
        return;
      }
  }
};

std::string config_error(dim3 grid, dim3 block, std::size_t smem) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535)
    return "grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
           std::to_string(grid.z) + ") is out of range";
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    return "block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
           std::to_string(block.z) + ") is out of range";
  if (smem > kMaxDynamicSmem)
    return std::to_string(smem) + " bytes of dynamic shared memory exceed the " +
           std::to_string(kMaxDynamicSmem) + "-byte limit";
  return "";
}

// The emulated device runs one kernel at a time.
std::mutex device_mutex;

}  // namespace

void run_grid(const char* name, dim3 grid, dim3 block, std::size_t smem_bytes, Schedule schedule,
              const std::function<void()>& body) {
  const std::string bad = config_error(grid, block, smem_bytes);
  if (!bad.empty())
    throw std::runtime_error(std::string("cudaLaunchKernel(") + name +
                             "): invalid configuration argument (emulated: " + bad + ")");
  std::lock_guard<std::mutex> device_lock(device_mutex);

  Launch L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.smem = smem_bytes;
  L.schedule = schedule;
  L.body = &body;
  L.nthreads = block.x * block.y * block.z;
  L.arena_size = smem_bytes + kGuardBytes;
  L.storage.assign(L.arena_size + kSmemAlign, kGuardByte);
  L.arena = L.storage.data() + (kSmemAlign - reinterpret_cast<std::uintptr_t>(L.storage.data()) % kSmemAlign);
  for (unsigned w = 0; w < (L.nthreads + warpSize - 1) / warpSize; ++w)
    L.warps.push_back(std::make_unique<WarpLog>());
  for (unsigned t = 0; t < L.nthreads; ++t)
    L.turn_cv.push_back(std::make_unique<std::condition_variable>());

  std::vector<std::thread> workers;
  workers.reserve(L.nthreads);
  auto stop = [&] {
    {
      std::lock_guard<std::mutex> lk(L.m);
      L.shutdown = true;
    }
    L.start_cv.notify_all();
    for (auto& t : workers) t.join();
  };
  try {
    for (unsigned t = 0; t < L.nthreads; ++t) workers.emplace_back(&Launch::worker, &L, t);
  } catch (...) {
    stop();
    throw;
  }

  for (unsigned bz = 0; bz < grid.z && !L.failed; ++bz)
    for (unsigned by = 0; by < grid.y && !L.failed; ++by)
      for (unsigned bx = 0; bx < grid.x && !L.failed; ++bx) {
        std::memset(L.arena, 0xFF, smem_bytes);  // NaN in float, half and bfloat16
        for (auto& w : L.warps) {
          w->calls.clear();
          w->base = 0;
        }
        std::unique_lock<std::mutex> lk(L.m);
        L.block_idx = uint3{bx, by, bz};
        L.arrived = L.exited = 0;
        L.phase = 0;
        L.turn_pos = 0;
        L.running = L.nthreads;
        ++L.block_serial;
        L.start_cv.notify_all();
        L.done_cv.wait(lk, [&] { return L.running == 0; });
        if (!L.failed) L.check_block();
      }
  stop();
  if (L.failed) throw std::runtime_error(std::string("emulated kernel ") + name + ": " + L.error);
}

void sync_block() {
  ThreadCtx& c = ctx("__syncthreads()");
  c.launch->arrive(c.tid);
}

unsigned char* dynamic_shared_memory() { return ctx("dynamic_shared_memory()").launch->arena; }

unsigned lane_id() { return ctx("lane_id()").tid % warpSize; }

void warp_collective(const char* op, const void* ptr, unsigned ldm, float value) {
  ThreadCtx& c = ctx(op);
  Launch& L = *c.launch;
  const unsigned warp = c.tid / warpSize, lane = c.tid % warpSize;
  const unsigned lanes = std::min<unsigned>(warpSize, L.nthreads - warp * warpSize);
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  WarpLog& log = *L.warps[warp];
  std::lock_guard<std::mutex> lk(log.m);
  const std::uint64_t i = c.collective_seq++ - log.base;
  if (i == log.calls.size()) {
    log.calls.push_back({op, ptr, ldm, bits, 1, lane});
  } else {
    WarpLog::Call& call = log.calls[i];
    if (std::strcmp(call.op, op) != 0 || call.ptr != ptr || call.ldm != ldm || call.value != bits)
      throw Fault("warp " + std::to_string(warp) + ": lane " + std::to_string(lane) + " called " +
                  op + " where lane " + std::to_string(call.first_lane) + " called " + call.op +
                  " with other arguments (wmma calls are warp-collective: same call, same "
                  "pointer and ldm in every lane)");
    ++call.count;
  }
  while (!log.calls.empty() && log.calls.front().count == lanes) {
    log.calls.pop_front();
    ++log.base;
  }
}

}  // namespace emu
