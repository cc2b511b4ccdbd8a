"""Build redkern's native code with CMake (see CMakeLists.txt).

Environment variables:
  REDKERN_CUDA=auto|1|0   build the CUDA C++ kernels when nvcc is found (auto, the default),
                          require them (1) or skip them (0).
  REDKERN_CUDA_ARCHS      CUDA architectures, ';'-separated (default "80;90").
  REDKERN_BUILD_JOBS      parallel compile jobs (default: the number of CPUs).
  REDKERN_SANITIZE=1      build with AddressSanitizer + UBSan (for the C++ tests only).
  REDKERN_BUILD_TYPE      CMake build type (default Release).
  REDKERN_TARGETS         only build these CMake targets (','-separated, e.g. "_C"); for
                          development, where one part is rebuilt while another is being edited.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt once; it produces every extension module."""

    def run(self):
        # setuptools clears self.inplace while building and copies back only the modules it
        # knows of; remember where the modules belong so CMake writes all of them there.
        self._into_source = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def copy_extensions_to_source(self):
        """In-place builds: CMake already wrote every module into redkern/ (build_extension)."""

    def build_extension(self, ext):
        import pybind11

        # Every module CMake builds (_C, _cuda, ...) lands beside the one setuptools knows of;
        # in-place and editable builds put them in the source tree directly.
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        if getattr(self, "_into_source", False):
            out_dir = ROOT / "redkern"
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("REDKERN_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DREDKERN_CUDA={os.environ.get('REDKERN_CUDA', 'auto')}",
            f"-DREDKERN_CUDA_ARCHS={os.environ.get('REDKERN_CUDA_ARCHS', '80;90')}",
            f"-DREDKERN_SANITIZE={'ON' if os.environ.get('REDKERN_SANITIZE') == '1' else 'OFF'}",
        ]
        jobs = os.environ.get("REDKERN_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        targets = [t for t in os.environ.get("REDKERN_TARGETS", "").split(",") if t]
        target_args = [a for t in targets for a in ("--target", t)]
        subprocess.run(["cmake", "--build", ".", "-j", jobs, *target_args], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("redkern._C")],
    cmdclass={"build_ext": CMakeBuild},
)
