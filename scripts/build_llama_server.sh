#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (the load benchmark's peer, issue #6) from the llama.cpp
# sources vendored in the PyPI sdist llama-cpp-python==0.3.36, into the git-ignored .cache/ folder.
# Neither its code nor its binary is committed. Idempotent: prints the binary's path when built.
#   LLAMA_CMAKE_FLAGS  extra CMake flags. On a VM whose CPU reports AMX but faults on its tiles
#                      (llama-server dies in ggml_backend_amx_mul_mat at `ldtilecfg`; seen on a 2-vCPU
#                      Xeon on 2026-12-02), build without -march=native's AMX:
#                      "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
#                       -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
#                       -DGGML_AVX512_VBMI=ON" (remove .cache/llama-server/build first).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
OUT=.cache/llama-server
BIN=$OUT/build/bin/llama-server
log() { printf 'build_llama_server: %s\n' "$*" >&2; }

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$OUT"
SDIST=$OUT/llama_cpp_python-$VERSION.tar.gz
if ! echo "$SHA256  $SDIST" | sha256sum --check --status 2>/dev/null; then
  # Through pip, so that the user's pip configuration (index mirror, proxy, certificates) applies.
  log "fetching the llama-cpp-python==$VERSION sdist with pip"
  rm -rf "$OUT/download"
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python -d "$OUT/download" "llama-cpp-python==$VERSION" >&2
  mv "$OUT/download/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
  rm -rf "$OUT/download"
  echo "$SHA256  $SDIST" | sha256sum --check --status || { log "sha256 of $SDIST does not match"; exit 1; }
fi
rm -rf "$OUT/src"
mkdir -p "$OUT/src"
tar -xzf "$SDIST" -C "$OUT/src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"

CMAKE=$(command -v cmake || true)
if [ -z "$CMAKE" ]; then
  [ -x .venv/bin/cmake ] || .venv/bin/python -m pip install --quiet cmake
  CMAKE=.venv/bin/cmake
fi
log "configuring and building llama-server (several minutes on 2 cores)"
# shellcheck disable=SC2086
"$CMAKE" -S "$OUT/src" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON \
  ${LLAMA_CMAKE_FLAGS:-} >&2
"$CMAKE" --build "$OUT/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
