// Self-tests of the emulator (selftest.cpp).
#pragma once

#include <string>

#include "cuda_emu/cuda_emu.h"

namespace redkern::cuda_emu {

void selftest_exchange(int* out, int blocks, int threads, bool use_barrier, emu::Schedule s);
void selftest_read_unwritten(float* out, int threads, emu::Schedule s);
void selftest_wmma_gemm(int dtype, const void* a, const void* b, const float* c, float* d,
                        bool a_col_major, bool b_col_major, emu::Schedule s);
// Runs a kernel that misbehaves in the way `kind` names; the launch must throw.
void selftest_fault(const std::string& kind, emu::Schedule s);

}  // namespace redkern::cuda_emu
