#!/usr/bin/env bash
# Install llama-cpp-python (the server's llama.cpp engine) into .venv: built from its source
# distribution once per machine (about 5 minutes on 2 cores) and cached as a wheel in
# ~/.cache/substratus/wheels, so later set-ups install it in seconds. The version is
# pyproject.toml's `llamacpp` extra.
#
# The build targets the CPU features every x86-64 machine of the last decade has (AVX2, FMA,
# F16C) instead of the building machine's own: a native build segfaults on the first token on
# some CPUs (its AMX kernels), and a wheel cached on one machine may run on another.
# LLAMACPP_CMAKE_ARGS replaces these flags (e.g. -DGGML_CUDA=ON for NVIDIA GPUs). PYTHON
# (default .venv/bin/python) and LLAMACPP_PIN (default pyproject.toml's) let images/model-server
# run it too.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '==> %s\n' "$*"; }
py="${PYTHON:-.venv/bin/python}"

pin="${LLAMACPP_PIN:-$(sed -n 's/^llamacpp = \["\(llama-cpp-python==[^"]*\)"\]$/\1/p' pyproject.toml)}"
if [ -z "$pin" ]; then
  echo "error: no llamacpp = [\"llama-cpp-python==...\"] extra in pyproject.toml" >&2
  exit 1
fi
version="${pin#*==}"
if "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$version')" 2>/dev/null; then
  step "llama-cpp-python $version is installed"
  exit 0
fi
if [ "$(uname -m)" = x86_64 ]; then
  default_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  default_flags="-DGGML_NATIVE=OFF"
fi
flags="${LLAMACPP_CMAKE_ARGS:-$default_flags}"
# The cache is keyed by the version, the flags and the Python: a wheel holds compiled code.
key="$(printf '%s %s %s' "$version" "$flags" "$("$py" -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-12)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/substratus/wheels/llama-cpp-python-$key"
if ! ls "$cache"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      step "installing Debian's C++ compiler (g++) to build llama.cpp"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
      echo "error: building llama-cpp-python needs a C++ compiler (apt-get install g++)" >&2
      exit 1
    fi
  fi
  step "building llama-cpp-python $version from source (once per machine, about 5 minutes)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$tmp" "$pin"
  mkdir -p "$cache"
  mv "$tmp"/llama_cpp_python-*.whl "$cache"/
fi
step "installing llama-cpp-python $version (cached build)"
"$py" -m pip install -q "$pin" --find-links "$cache" --no-index --no-deps
# Its own dependencies (numpy, jinja2, diskcache, typing-extensions), from the registry.
"$py" -m pip install -q "$pin" --find-links "$cache"
