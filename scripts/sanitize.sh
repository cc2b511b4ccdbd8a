#!/usr/bin/env bash
# Build the C++ modules (redkern._C and the CUDA emulation redkern._cuda_emu) with
# AddressSanitizer + UBSan in a scratch copy of this checkout, and run their tests there.
#
#   scripts/sanitize.sh                      # the C++ kernels' tests
#   scripts/sanitize.sh tests/test_ops.py    # or any pytest arguments
#
# Needs gcc (libasan, libubsan), cmake, pybind11 and the test requirements in the current
# Python. Python and torch are not instrumented, so libasan is preloaded; leak checking is off
# (the interpreter keeps allocations alive at exit). Any report stops the run with an error.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${REDKERN_SANITIZE_DIR:-$(mktemp -d -t redkern-sanitize.XXXXXX)}
python=${PYTHON:-python}
echo "sanitize: building in $work"

# The working tree as it is (tracked and new files, not ignored ones), not the last commit.
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$work"
cd "$work"
REDKERN_SANITIZE=1 REDKERN_CUDA=0 REDKERN_BUILD_TYPE=RelWithDebInfo REDKERN_TARGETS=_C,_cuda_emu \
  "$python" setup.py -q build_ext --inplace

if [ $# -eq 0 ]; then
  # Triton's interpreter runs no C++ of ours; leave it out.
  set -- tests/test_cpu_kernels.py tests/test_cuda_emulation.py tests/test_ops.py tests/test_reliability.py \
    -k "not triton"
fi
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:verify_asan_link_order=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# `python -m pytest` puts this copy first on sys.path, so its instrumented modules are the ones
# imported; the first line printed says which.
"$python" -c "import redkern._C as c, redkern._cuda_emu as e; print('sanitize: testing', c.__file__, e.__file__)"

# The canary: a call that lies about its input's size (the one thing the C++ layer cannot check)
# must be caught reading past the buffer, or the sanitizer is not really on.
canary='
import torch
from redkern import _C
from redkern.backends import cpu
x = torch.rand(16)  # claimed below to hold 1x4x4x8 = 128 floats
p = cpu.packed_weight(torch.randn(8, 8, 3, 3), False, _C.Algorithm.direct)
b, y = torch.zeros(8), torch.empty(128)
_C.conv2d(x.data_ptr(), 128, p.data_ptr(), p.numel(), b.data_ptr(), 8, 0, 0, y.data_ptr(), 128,
          0, 0, 0, 0, 1, 4, 4, 8, 8, 3, 3, 1, 1, 1, 0, 0, 1.0, 1.0,
          _C.DType.float32, _C.Algorithm.direct, 1, "")
'
report=$(mktemp)
if "$python" -c "$canary" 2>"$report"; then
  echo "sanitize: the canary's overflow went unreported: the sanitizer is not active" >&2
  exit 1
fi
grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$report" || {
  cat "$report" >&2; echo "sanitize: the canary failed, but not as expected" >&2; exit 1; }
echo "sanitize: the canary's deliberate overflow was caught"
"$python" -m pytest -p no:cacheprovider -q "$@"
echo "sanitize: no AddressSanitizer or UBSan report"
