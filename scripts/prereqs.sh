#!/usr/bin/env bash
# Checks (and on Debian as root, installs) what building LaminarDB needs besides Rust: the
# OpenSSL development files and pkg-config (librdkafka, under the Kafka connector, is built with
# TLS against the system's OpenSSL), and a C toolchain.
set -euo pipefail
missing=()
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
else
  echo "missing build prerequisites: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
