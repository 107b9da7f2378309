#!/usr/bin/env bash
# Builds cellkern's C++ (_C with every CPU variant, _emu; CUDA off) with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs the CPU and emulator tests on it. Exit 0 means the tests passed and no sanitizer reported anything.
#
#   tools/sanitize.sh            every test (about 40 min on 2 cores), -O1
#   tools/sanitize.sh --ci       tools/sanitize_ci_tests.txt (what .ci/run runs, about 4 min), -O0; fails as well if
#                                those tests no longer call every entry point of tools/sanitize_ci_coverage.txt
#   tools/sanitize.sh [--ci] -- PYTEST_ARGS   those pytest arguments instead of the default selection
#
# Needs gcc's libasan/libubsan, cmake >= 3.24, ninja and pybind11 for the python that runs it ($PYTHON, else python3).
# Reports: build/sanitize[-ci]/reports/. The modules load into an uninstrumented python, so the runtimes are preloaded;
# leak checking is off (CPython and torch keep their allocations until exit).
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0 pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "sanitize.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-$(command -v python || command -v python3)}

if [ $ci = 1 ]; then build=build/sanitize-ci opt="-O0 -g1"; else build=build/sanitize opt="-O1 -g"; fi
# -O0 compiles the three CPU variants in half the time; -O1 finds the same bugs and runs the whole suite faster.
cmake -S . -B "$build" -G Ninja -DCELLKERN_SANITIZE=ON -DCELLKERN_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_CXX_FLAGS_DEBUG="$opt" -DPython_EXECUTABLE="$python" \
      -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >/dev/null
echo "+ building the sanitized modules in $build ($opt)"
time cmake --build "$build" --target _C _emu -j "$(nproc)"

# A private copy of the package with the sanitized modules, first on PYTHONPATH (ahead of any installed cellkern).
pkg=$build/pkg
rm -rf "$pkg" "$build/reports"
mkdir -p "$pkg" "$build/reports"
cp -r python/cellkern "$pkg/"
find "$pkg/cellkern" -name '*.so' -delete
cp "$build"/_C*.so "$build"/_emu*.so "$pkg/cellkern/"

if [ ${#pytest_args[@]} -eq 0 ]; then
  if [ $ci = 1 ]; then
    mapfile -t pytest_args < <(grep -v '^#' tools/sanitize_ci_tests.txt | sed '/^$/d')
    pytest_args+=(--ck-coverage-require tools/sanitize_ci_coverage.txt)
  else
    # tests/test_wheel.py builds and installs a release wheel: nothing of the sanitized build is in it.
    pytest_args=(tests --ignore=tests/test_wheel.py --ck-coverage-out "$build/reports/coverage.json")
  fi
fi

reports=$PWD/$build/reports
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=4096:halt_on_error=1:abort_on_error=0:log_path=$reports/asan:strict_string_checks=1"
# Tests that cap the address space (RLIMIT_AS) cannot under ASan, whose shadow is reserved at start; they read this.
export CELLKERN_SANITIZED=1
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
export PYTHONPATH="$PWD/$pkg:$PWD/tests:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"
# torch.compile's C++ kernels would be compiled and run in this process: keep them in a private cache.
export TORCHINDUCTOR_CACHE_DIR="$PWD/$build/inductor"
echo "+ pytest ${pytest_args[*]:0:8} ... (${#pytest_args[@]} arguments) under ASan + UBSan"
status=0
"$python" -m pytest -q -p no:cacheprovider -p ck_entry_coverage "${pytest_args[@]}" || status=$?
unset LD_PRELOAD

# The logs also hold ASan's warnings for allocations refused on purpose (the MemoryError tests): only errors count.
bad=$(grep -l -E 'ERROR|runtime error|DEADLYSIGNAL' "$reports"/asan* "$reports"/ubsan* 2>/dev/null || true)
if [ -n "$bad" ]; then
  echo "sanitize.sh: SANITIZER REPORTS in $reports:" >&2
  for f in $bad; do echo "== $f" >&2; head -60 "$f" >&2; done
  exit 1
fi
[ $status = 0 ] || { echo "sanitize.sh: pytest failed (exit $status) with no sanitizer report" >&2; exit $status; }
echo "sanitize.sh: clean (no ASan/UBSan report; tests passed)"
