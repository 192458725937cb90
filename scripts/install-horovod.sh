#!/usr/bin/env bash
# Build Horovod 0.28.1 (its last release) from the sdist against the torch already installed in
# the Python given as $1 (default: python3), with Gloo and MPI controllers and no TensorFlow/MXNet.
#
# 0.28.1 asks for C++14, but torch >= 2.1 headers need C++17: the two CMakeLists.txt that set
# the standard are patched before the build. Build time: ~2 min on 2 cores (MAKEFLAGS=-j2).
#
#   scripts/install-horovod.sh .venv/bin/python        # what `make install-horovod` runs
set -euo pipefail

PY="${1:-python3}"
VERSION="${HOROVOD_VERSION:-0.28.1}"
# an absolute path: the build runs in another directory (a relative .venv/bin would not be found)
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi

if "$PY" -c "import horovod.torch" 2>/dev/null; then
    echo "horovod already importable by $PY: $("$PY" -c 'import horovod; print(horovod.__version__)')"
    exit 0
fi
"$PY" -c "import torch" || { echo "install torch into $PY first (make install)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Build requirements: numpy for the build, cmake when the system has none; the pip-installed
# Open MPI puts mpicc next to $PY, so MPI is found there.
bindir="$(dirname "$(command -v "$PY")")"
"$PY" -m pip install --quiet numpy packaging wheel setuptools psutil pyyaml cloudpickle
command -v cmake >/dev/null 2>&1 || [ -x "$bindir/cmake" ] || "$PY" -m pip install --quiet cmake
export PATH="$bindir:$PATH"

"$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$VERSION" -d "$work"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    grep -q "CMAKE_CXX_STANDARD 14" "$f" || { echo "$f: no C++14 line to patch" >&2; exit 1; }
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$f"
done

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS="${HOROVOD_CPU_OPERATIONS:-gloo}"
# MPI support when an MPI compiler wrapper is on PATH (the .venv's pip Open MPI, or the system's)
if command -v mpicxx >/dev/null 2>&1; then export HOROVOD_WITH_MPI=1; fi
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
"$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir "$src"
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'gloo', hvd.gloo_built(), 'mpi', hvd.mpi_built())"
