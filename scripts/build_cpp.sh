#!/usr/bin/env bash
# Build engines/ (the C++ runtime and tiue_infer) with ONNX Runtime taken from the package
# registries, no release download:
#   headers  <- npm package com.github.asus4.onnxruntime (pinned; it vendors ONNX Runtime's
#               official C/C++ headers, C API 29 = ORT 1.29, inside its iOS xcframework)
#   library  <- the onnxruntime Python wheel's libonnxruntime.so (the one the Python runtime
#               uses: same kernels, same numbers); else that npm package's Linux x64 library
# The C API is ABI-stable: headers of API N work with any library >= 1.N (GetApi(N)).
#
# Usage: scripts/build_cpp.sh            prints the path of tiue_infer on its last stdout line
# Env:   TIUE_CPP_CACHE   downloads + build (default ~/.cache/tiue-export/cpp)
#        ONNXRUNTIME_ROOT use this ONNX Runtime package (include/, lib/) instead of the registries
#        TIUE_CMAKE_ARGS  extra CMake arguments (e.g. -DTIUE_WITH_TENSORRT=ON -DTENSORRT_ROOT=...)
# Exit:  0 built; 3 a prerequisite cannot be had here (the last stderr line says which: tests
#        skip on it); anything else is a real build failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TIUE_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tiue-export/cpp}"
NPM_PKG="com.github.asus4.onnxruntime"
NPM_VERSION="0.4.9"
# The registry's integrity string for that version: the tarball is checked against it.
NPM_INTEGRITY="sha512-BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
HEADERS_IN_TGZ="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers"
LIB_IN_TGZ="package/Plugins/Linux/x64/libonnxruntime.so"

unavailable() { echo "build_cpp: cannot build here: $*" >&2; exit 3; }
log() { echo "build_cpp: $*" >&2; }

for tool in cmake g++ python3; do
  command -v "$tool" >/dev/null || unavailable "$tool is not installed"
done
[ -f /usr/include/nlohmann/json.hpp ] || [ -f /usr/local/include/nlohmann/json.hpp ] \
  || unavailable "nlohmann/json.hpp not found: apt-get install -y nlohmann-json3-dev"
mkdir -p "$CACHE"

# -- ONNX Runtime: include/ + lib/ under $ORT ------------------------------------------------------
if [ -n "${ONNXRUNTIME_ROOT:-}" ]; then
  ORT="$ONNXRUNTIME_ROOT"
  log "using ONNXRUNTIME_ROOT=$ORT"
else
  ORT="$CACHE/onnxruntime"
  TGZ="$CACHE/npm/$NPM_PKG-$NPM_VERSION.tgz"
  # The library: the Python wheel's (what tiue_export.runtime runs), else the npm package's.
  WHEEL_LIB="$(python3 - <<'PY' 2>/dev/null || true
import glob, os
import onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
print(libs[0] if libs else "")
PY
)"
  if [ ! -f "$ORT/include/onnxruntime_cxx_api.h" ] || [ ! -f "$ORT/lib/libonnxruntime.so" ] \
     || { [ -n "$WHEEL_LIB" ] && [ ! -f "$ORT/lib/$(basename "$WHEEL_LIB")" ]; }; then
    if [ ! -f "$TGZ" ]; then
      command -v npm >/dev/null || unavailable "npm is not installed (needed to fetch the ONNX Runtime headers)"
      mkdir -p "$CACHE/npm"
      log "fetching ONNX Runtime headers: npm pack $NPM_PKG@$NPM_VERSION (~150 MB, once)"
      (cd "$CACHE/npm" && npm pack --silent "$NPM_PKG@$NPM_VERSION" >/dev/null 2>"$CACHE/npm/pack.log") \
        || unavailable "npm pack $NPM_PKG@$NPM_VERSION failed (no access to the npm registry?): $(tail -n1 "$CACHE/npm/pack.log")"
    fi
    got="$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$TGZ")"
    if [ "$got" != "$NPM_INTEGRITY" ]; then
      rm -f "$TGZ"
      echo "build_cpp: $TGZ does not match the pinned integrity $NPM_INTEGRITY" >&2
      exit 1
    fi
    rm -rf "$ORT.tmp" && mkdir -p "$ORT.tmp/x" "$ORT.tmp/include" "$ORT.tmp/lib"
    tar -xzf "$TGZ" -C "$ORT.tmp/x" "$HEADERS_IN_TGZ" "$LIB_IN_TGZ"
    cp "$ORT.tmp/x/$HEADERS_IN_TGZ"/*.h "$ORT.tmp/include/"
    if [ -n "$WHEEL_LIB" ]; then
      log "library: $WHEEL_LIB (onnxruntime wheel)"
      cp "$WHEEL_LIB" "$ORT.tmp/lib/"
      ln -s "$(basename "$WHEEL_LIB")" "$ORT.tmp/lib/libonnxruntime.so.1"
    else
      log "library: $NPM_PKG's Linux x64 libonnxruntime.so (no onnxruntime wheel importable)"
      cp "$ORT.tmp/x/$LIB_IN_TGZ" "$ORT.tmp/lib/libonnxruntime.so.1"
    fi
    [ -e "$ORT.tmp/lib/libonnxruntime.so" ] || ln -s libonnxruntime.so.1 "$ORT.tmp/lib/libonnxruntime.so"
    rm -rf "$ORT.tmp/x" "$ORT" && mv "$ORT.tmp" "$ORT"
  fi
fi

# -- configure + build -------------------------------------------------------------------------
# One build tree per source checkout: CMake refuses a cache made from another source directory.
BUILD="$CACHE/build-$(printf %s "$ROOT" | sha256sum | cut -c1-12)"
# shellcheck disable=SC2086
cmake -S "$ROOT/engines" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DONNXRUNTIME_ROOT="$ORT" ${TIUE_CMAKE_ARGS:-} >&2
cmake --build "$BUILD" -j "${TIUE_BUILD_JOBS:-2}" >&2
echo "$BUILD/tiue_infer"
