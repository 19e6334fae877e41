#!/usr/bin/env bash
# What building the bridge needs besides the Rust toolchain, on Debian:
# gcc and make for the bundled librdkafka, pkg-config and OpenSSL's headers
# for its TLS and SCRAM. Skips what is present; needs root (or sudo).
# README's first command runs it; scripts/install-test-deps.sh calls it.
set -euo pipefail

need_apt=()
# c++ too: the fuzz targets' libFuzzer is C++.
{ command -v cc && command -v c++ && command -v make; } >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-build-deps: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
