#!/usr/bin/env python3
"""Check the CUDA C++ kernels' register allocation: no spills, no local-memory stack frames.

Compiles every csrc/cuda/*.cu with nvcc to a cubin per architecture (``-Xptxas -v``), parses
what ptxas reports for each kernel, prints a table (registers, stack, spills, barriers,
static and dynamic shared memory) and exits non-zero if any kernel spills registers or keeps
a stack frame in local memory: every kernel in csrc/cuda is a hot loop.

    python .ci/check_ptxas.py                 # sm_80 and sm_90 (REDKERN_CUDA_ARCHS)
    python .ci/check_ptxas.py --archs 90

Exit codes: 0 clean; 1 a kernel spills or uses local memory, or a kernel the dispatcher can
launch was not compiled; 2 nvcc missing or the compile failed (with --allow-missing-nvcc, a
missing nvcc exits 0 after saying so).
When redkern._cuda_emu (the same kernel source built for the host: build it first, e.g.
``REDKERN_TARGETS=_cuda_emu python setup.py build_ext --inplace``) is importable, it lists
every kernel the dispatchers launch and their dynamic shared memory (ptxas itself only sees
static shared memory), and each of them must appear in ptxas's report for every architecture.
A .cu file without kernels (runtime.cu) is compiled too, and reports none.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"

_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+a?)'")
_PROPS = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, "
                    r"(?P<ld>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers")
_BARRIERS = re.compile(r"used (?P<n>\d+) barriers")
_SMEM = re.compile(r"(?P<n>\d+) bytes smem")


@dataclass
class Kernel:
    mangled: str
    arch: str
    source: str
    registers: int = -1
    stack: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    barriers: int = 0
    static_smem: int = 0
    name: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.registers < 0 or self.stack < 0:
            out.append("ptxas reported no register/stack figures")
        if self.spill_stores > 0 or self.spill_loads > 0:
            out.append(f"spills registers ({self.spill_stores} bytes stored, "
                       f"{self.spill_loads} bytes loaded)")
        if self.stack > 0:
            out.append(f"has a {self.stack}-byte stack frame in local memory")
        return out


def find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def parse_ptxas(text: str, source: str) -> list[Kernel]:
    """Kernels in the order ptxas reports them; each entry's figures follow its header."""
    kernels: list[Kernel] = []
    by_name: dict[str, Kernel] = {}
    current: Kernel | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = Kernel(m["name"], m["arch"], source)
            kernels.append(current)
            by_name[m["name"]] = current
            continue
        if m := _PROPS.search(line):
            current = by_name.get(m["name"], current)
            continue
        if current is None:
            continue
        if m := _FRAME.search(line):
            current.stack, current.spill_stores, current.spill_loads = (
                int(m["stack"]), int(m["st"]), int(m["ld"]))
        if m := _USED.search(line):
            current.registers = int(m["regs"])
            if b := _BARRIERS.search(line):
                current.barriers = int(b["n"])
            if s := _SMEM.search(line):
                current.static_smem = int(s["n"])
    return kernels


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return lines if out.returncode == 0 and len(lines) == len(names) else names


_DTYPES = {"__half": "f16", "__nv_bfloat16": "bf16"}


def short_name(demangled: str) -> str:
    """``void redkern::cuda::standard::conv3x3_wmma<__half, 64, 32>(...)`` ->
    ``conv3x3_wmma_f16<bn=64,ck=32>`` (the name the launcher reports; conv1x1 alike); others
    left as is."""
    m = re.search(r"(conv[13]x[13]_wmma)<(\w+), (\d+), (\d+)>", demangled)
    if m:
        return f"{m[1]}_{_DTYPES.get(m[2], m[2])}<bn={m[3]},ck={m[4]}>"
    m = re.search(r"(conv[13]x[13]_f32)<(\d+), (\d+)>", demangled)
    if m:
        return f"{m[1]}<bn={m[2]},ck={m[3]}>"
    return re.sub(r"^void |\(.*\)$", "", demangled).replace("redkern::cuda::standard::", "")


def _import_cuda_emu():
    """redkern._cuda_emu: the redkern already importable (an installed copy), else this
    checkout's; sys.path is left as it was (the tests load this file as a module, and processes
    they spawn inherit sys.path: the source tree first would shadow the installed package)."""
    try:
        from redkern import _cuda_emu
        return _cuda_emu
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT))
    try:
        from redkern import _cuda_emu
        return _cuda_emu
    finally:
        sys.path.remove(str(ROOT))


def dispatched_kernels() -> dict[str, int]:
    """Every kernel the dispatchers can launch -> its dynamic shared memory bytes, from the
    host build of the same source ({} when redkern._cuda_emu is not importable). The channel
    counts reach every plan of csrc/cuda/conv.h (plan_conv)."""
    try:
        emu = _import_cuda_emu()
    except Exception:
        return {}
    sizes = {}
    for dtype in emu.DTYPE_CODES.values():
        for kernel, _padding in emu.KERNELS:
            for cin in (1, 5, 16, 17, 32, 33, 64):
                for cout in (8, 16, 32, 64):
                    name, smem = emu.kernel_for(dtype, kernel, cin, cout)
                    sizes[name] = smem
    return sizes


def compile_cubin(nvcc: str, src: Path, arch: str, out_dir: Path, extra: list[str]) -> str:
    # The include path of CMakeLists.txt: csrc/ and the root (redkern/epilogue.def).
    cmd = [nvcc, "-cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-O3", "-std=c++17",
           "-Xptxas", "-v", "-I", str(ROOT / "csrc"), "-I", str(ROOT), *extra, str(src),
           "-o", str(out_dir / f"{src.stem}.sm_{arch}.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"nvcc failed for {src.relative_to(ROOT)} (sm_{arch}): {' '.join(cmd)}")
    return proc.stdout + proc.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=os.environ.get("REDKERN_CUDA_ARCHS", "80;90"),
                    help="architectures, ';' or ',' separated (default: REDKERN_CUDA_ARCHS or 80;90)")
    ap.add_argument("--nvcc-flag", action="append", default=[], metavar="FLAG",
                    help="extra nvcc flag (repeatable), e.g. --nvcc-flag=-maxrregcount=32 to "
                         "see the check fail")
    ap.add_argument("--allow-missing-nvcc", action="store_true",
                    help="exit 0 (after saying so) when nvcc is not installed")
    args = ap.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_ptxas: nvcc not found (PATH, $NVCC, $CUDA_HOME/bin): cannot check the CUDA kernels")
        return 0 if args.allow_missing_nvcc else 2
    archs = [a.strip().removeprefix("sm_") for a in re.split(r"[;,]", args.archs) if a.strip()]
    sources = sorted(CUDA_SRC.glob("*.cu"))
    if not sources:
        print(f"check_ptxas: no .cu files under {CUDA_SRC}")
        return 2

    t0 = time.time()
    kernels: list[Kernel] = []
    with tempfile.TemporaryDirectory(prefix="redkern-ptxas-") as tmp:
        for src in sources:
            for arch in archs:
                try:
                    text = compile_cubin(nvcc, src, arch, Path(tmp), args.nvcc_flag)
                except RuntimeError as e:
                    print(f"check_ptxas: {e}")
                    return 2
                kernels += parse_ptxas(text, src.name)
    if not kernels:
        print(f"check_ptxas: ptxas reported no kernels for {', '.join(s.name for s in sources)}")
        return 2
    for k, d in zip(kernels, demangle([k.mangled for k in kernels])):
        k.name = short_name(d)

    dyn = dispatched_kernels()
    header = f"{'kernel':34} {'arch':6} {'regs':>4} {'stack':>5} {'spill st/ld':>11} {'bar':>3} " \
             f"{'smem static':>11} {'smem dynamic':>12}"
    print(header)
    print("-" * len(header))
    failed = []
    for k in sorted(kernels, key=lambda k: (k.name, k.arch)):
        dyn_s = str(dyn[k.name]) if k.name in dyn else "?"
        bad = k.problems()
        print(f"{k.name:34} {k.arch:6} {k.registers:>4} {k.stack:>5} "
              f"{f'{k.spill_stores}/{k.spill_loads}':>11} {k.barriers:>3} {k.static_smem:>11} "
              f"{dyn_s:>12}{'  <-- ' + '; '.join(bad) if bad else ''}")
        failed += [f"{k.name} ({k.arch}, {k.source}): {p}" for p in bad]
    compiled = {(k.name, k.arch) for k in kernels}
    for name in sorted(dyn):
        for arch in archs:
            if (name, f"sm_{arch}") not in compiled:
                failed.append(f"{name} (sm_{arch}): the dispatcher launches it, but ptxas did not "
                              "report it (not compiled, or named differently)")
    print(f"\n{len(kernels)} kernels from {len(sources)} file(s) for "
          f"{', '.join('sm_' + a for a in archs)} in {time.time() - t0:.0f}s"
          + ("" if dyn else "; dynamic shared memory unknown (redkern._cuda_emu not importable)"))
    if failed:
        print("\ncheck_ptxas: FAILED: register spills, local memory or missing kernels:")
        for f in failed:
            print("  " + f)
        return 1
    print("check_ptxas: OK: no register spills, no local-memory stack frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
