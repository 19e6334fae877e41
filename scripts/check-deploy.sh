#!/usr/bin/env bash
# Static checks of the deploy kit (no container engine or cluster needed):
#   - both Kustomizations render (`kubectl kustomize`) and hold the expected
#     objects, with the settings operators rely on (probes, security context,
#     the pod name as HOSTNAME, the config mount);
#   - the PrometheusRule of the prometheus-operator overlay matches
#     deploy/prometheus/alerts.yml (scripts/gen-prometheusrule.sh --check);
#   - every compose file parses, every host path it mounts (relative to the
#     compose file's directory, through `extends` too) exists, every named
#     volume is declared, the build context has its Dockerfile;
#   - every file the Dockerfile COPYs from the context exists and is not
#     excluded by .dockerignore;
#   - with a Docker Compose v2 CLI on PATH (`docker compose` or
#     `docker-compose` v2): `config -q` on each compose file;
#   - with AMQP_BRIDGE_BIN=path/to/amqp-bridge: `amqp-bridge check` on every
#     bridge configuration under deploy/ (placeholder environment).
#
# Exit 0 when all pass, 1 when one fails, 2 when a tool is missing.
# Needs kubectl (kustomize v5) and python3 with PyYAML (apt-get install python3-yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
passed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

PY=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "check-deploy: python3 with PyYAML not found (apt-get install python3-yaml, or pip install pyyaml)" >&2
  exit 2
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "check-deploy: kubectl not found (it renders the Kustomizations; any kubectl >= 1.27 will do)" >&2
  exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- kustomize
render() { # dir output
  if kubectl kustomize "$1" >"$2" 2>"$2.err"; then
    ok "kubectl kustomize $1"
    return 0
  fi
  bad "kubectl kustomize $1: $(cat "$2.err")"
  return 1
}

cat >"$tmp/k8s_check.py" <<'PYTHON'
import sys, yaml
path, which = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
kinds = {d["kind"]: d for d in docs}
problems = []
want = {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"}
if which == "overlay":
    want |= {"ServiceMonitor", "PrometheusRule"}
for k in sorted(want - kinds.keys()):
    problems.append(f"no {k}")
dep = kinds.get("Deployment")
if dep:
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if dep["spec"].get("replicas", 1) < 2:
        problems.append("replicas < 2")
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        problems.append("terminationGracePeriodSeconds < 30 (shutdown_timeout is 20s)")
    psc = pod.get("securityContext", {})
    for key, val in [("runAsNonRoot", True), ("runAsUser", 10001), ("runAsGroup", 10001), ("fsGroup", 10001)]:
        if psc.get(key) != val:
            problems.append(f"pod securityContext.{key} != {val}")
    csc = c.get("securityContext", {})
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation not false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        problems.append("capabilities do not drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append("seccompProfile not RuntimeDefault")
    probes = {n: (c.get(n) or {}).get("httpGet", {}).get("path") for n in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problems.append(f"probes: {probes}")
    if not any(p.get("containerPort") == 9464 for p in c.get("ports", [])):
        problems.append("no containerPort 9464")
    hostname = [e for e in c.get("env", []) if e.get("name") == "HOSTNAME"]
    if not hostname or hostname[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problems.append("HOSTNAME is not the pod name (fieldRef metadata.name)")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if not mounts.get("/etc/amqp-bridge", {}).get("readOnly"):
        problems.append("/etc/amqp-bridge not mounted read-only")
    if "/data" not in mounts:
        problems.append("/data not mounted")
    args = c.get("args", []) + c.get("command", [])
    if "/etc/amqp-bridge/bridge.yaml" not in args:
        problems.append("container does not run /etc/amqp-bridge/bridge.yaml")
    secret = kinds.get("Secret", {}).get("metadata", {}).get("name")
    refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
    if secret not in refs:
        problems.append("the Secret is not in envFrom")
cm = kinds.get("ConfigMap")
if cm:
    try:
        cfg = yaml.safe_load(cm["data"]["bridge.yaml"])
        if cfg.get("telemetry", {}).get("listen") != "0.0.0.0:9464":
            problems.append("bridge.yaml telemetry.listen is not 0.0.0.0:9464")
    except Exception as e:  # noqa: BLE001
        problems.append(f"ConfigMap bridge.yaml: {e}")
svc = kinds.get("Service")
if svc and not any(p.get("port") == 9464 and p.get("name") == "metrics" for p in svc["spec"]["ports"]):
    problems.append("Service has no port 9464 named metrics")
pdb = kinds.get("PodDisruptionBudget")
if pdb and pdb["spec"].get("maxUnavailable") != 1:
    problems.append("PodDisruptionBudget maxUnavailable != 1")
sm = kinds.get("ServiceMonitor")
svc = kinds.get("Service")
if sm and svc:
    sel = sm["spec"]["selector"].get("matchLabels", {})
    labels = svc["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in sel.items()):
        problems.append("ServiceMonitor selector does not match the Service's labels")
    ports = {p.get("name") for p in svc["spec"]["ports"]}
    if any(e.get("port") not in ports for e in sm["spec"]["endpoints"]):
        problems.append("ServiceMonitor endpoint port is not a Service port name")
pr = kinds.get("PrometheusRule")
if pr and not pr.get("spec", {}).get("groups"):
    problems.append("PrometheusRule has no rule groups")
for p in problems:
    print(f"  {p}")
sys.exit(1 if problems else 0)
PYTHON

k8s_check() { # rendered-file base|overlay label
  local out
  if out=$("$PY" "$tmp/k8s_check.py" "$1" "$2" 2>&1); then
    ok "$3: objects and settings"
  else
    bad "$3: objects and settings
$out"
  fi
}
if render deploy/kubernetes "$tmp/base.yaml"; then
  k8s_check "$tmp/base.yaml" base deploy/kubernetes
fi
overlay=deploy/kubernetes/overlays/prometheus-operator
if render "$overlay" "$tmp/overlay.yaml"; then
  k8s_check "$tmp/overlay.yaml" overlay "$overlay"
fi

if out=$(scripts/gen-prometheusrule.sh --check 2>&1); then
  ok "$out"
else
  bad "$out"
fi

# ---------------------------------------------------------------- compose
compose_files=(deploy/docker-compose.yml deploy/docker-compose.platform.yml)
for f in "${compose_files[@]}"; do
  if out=$("$PY" - "$f" 2>&1 <<'PYTHON'
import os, sys, yaml

def load(path):
    with open(path) as fh:
        return yaml.safe_load(fh)

def is_host_path(src):
    return src.startswith((".", "/", "~"))

problems = []
path = sys.argv[1]
top = load(path)
if not isinstance(top, dict) or not isinstance(top.get("services"), dict) or not top["services"]:
    sys.exit(f"{path}: no services")
declared = set((top.get("volumes") or {}).keys())

def service_def(file, name, seen=()):
    """The service as written, plus (dir, spec) pairs for it and what it extends."""
    doc = load(file)
    svc = (doc.get("services") or {}).get(name)
    if svc is None:
        problems.append(f"{file}: no service {name}")
        return []
    chain = [(os.path.dirname(os.path.abspath(file)), svc)]
    ext = svc.get("extends")
    if ext:
        if isinstance(ext, str):
            ext = {"service": ext}
        base_file = os.path.join(os.path.dirname(file), ext.get("file", os.path.basename(file)))
        if not os.path.isfile(base_file):
            problems.append(f"{file}: service {name} extends a missing file {base_file}")
        elif (base_file, ext["service"]) not in seen:
            chain += service_def(base_file, ext["service"], seen + ((base_file, ext["service"]),))
    return chain

checked = 0
for name in top["services"]:
    for base_dir, svc in service_def(path, name):
        if not isinstance(svc, dict):
            problems.append(f"service {name} is not a mapping")
            continue
        if not svc.get("image") and not svc.get("build") and not svc.get("extends"):
            problems.append(f"service {name}: neither image nor build")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                src = vol.split(":", 1)[0] if ":" in vol else None
                kind = "bind" if src and is_host_path(src) else ("volume" if src else "anonymous")
            else:
                src, kind = vol.get("source"), vol.get("type", "volume")
            if kind == "bind":
                host = os.path.normpath(os.path.join(base_dir, os.path.expanduser(src)))
                checked += 1
                if not os.path.exists(host):
                    problems.append(f"service {name}: mounts {src}, but {os.path.relpath(host)} does not exist")
            elif kind == "volume" and src and src not in declared:
                problems.append(f"service {name}: volume {src} is not declared under top-level volumes")
        for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []):
            p = env_file if isinstance(env_file, str) else env_file.get("path")
            required = True if isinstance(env_file, str) else env_file.get("required", True)
            checked += 1
            if required and not os.path.exists(os.path.join(base_dir, p)):
                problems.append(f"service {name}: env_file {p} does not exist")
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            checked += 1
            if not os.path.isfile(os.path.join(base_dir, ctx, dockerfile)):
                problems.append(f"service {name}: build context {ctx} has no {dockerfile}")
        deps = svc.get("depends_on") or []
        for dep in (deps.keys() if isinstance(deps, dict) else deps):
            if dep not in top["services"]:
                problems.append(f"service {name}: depends_on unknown service {dep}")
for p in problems:
    print(f"  {p}")
if problems:
    sys.exit(1)
print(f"{len(top['services'])} services, {checked} host paths and build contexts present")
PYTHON
  ); then
    ok "$f: $out"
  else
    bad "$f:
$out"
  fi
done

compose_cli=()
if docker compose version >/dev/null 2>&1; then
  compose_cli=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
  compose_cli=(docker-compose)
fi
if [ ${#compose_cli[@]} -gt 0 ]; then
  for f in "${compose_files[@]}"; do
    if out=$(ALIYUN_AK=placeholder ALIYUN_SK=placeholder ALIYUN_UID=1234567890123456 \
      CONSUMER_GROUP=placeholder "${compose_cli[@]}" -f "$f" config -q 2>&1); then
      ok "${compose_cli[*]} -f $f config"
    else
      bad "${compose_cli[*]} -f $f config: $out"
    fi
  done
else
  echo "skip: no Docker Compose v2 CLI on PATH (the compose files were checked as YAML only)"
fi

# ---------------------------------------------------------------- Dockerfile
if out=$("$PY" - 2>&1 <<'PYTHON'
import fnmatch, os, re, shlex, sys

lines, buf = [], ""
for raw in open("Dockerfile"):
    line = raw.rstrip("\n")
    if not buf and line.lstrip().startswith("#"):
        continue
    if line.endswith("\\"):
        buf += line[:-1] + " "
        continue
    lines.append(buf + line)
    buf = ""

patterns = []
for raw in open(".dockerignore"):
    p = raw.strip()
    if not p or p.startswith("#"):
        continue
    neg = p.startswith("!")
    p = p[1:] if neg else p
    patterns.append((neg, p.strip("/")))

def ignored(path):
    """Docker's rule: the last matching pattern wins; a pattern matching a parent
    directory excludes what is below it."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for neg, pat in patterns:
        for pre in prefixes:
            if fnmatch.fnmatchcase(pre, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(pre.split("/")[-1], pat[3:])):
                result = not neg
                break
    return result

problems, copied = [], 0
for line in lines:
    m = re.match(r"\s*(COPY|ADD)\s+(.*)", line, re.I)
    if not m:
        continue
    args = shlex.split(m.group(2))
    if any(a.startswith("--from") for a in args):
        continue
    args = [a for a in args if not a.startswith("--")]
    for src in args[:-1]:
        if "$" in src:
            continue  # an ARG (BINARY of runtime-prebuilt): built outside
        copied += 1
        if not os.path.exists(src):
            problems.append(f"COPY {src}: not in the repository")
        elif ignored(src.rstrip("/")):
            problems.append(f"COPY {src}: excluded by .dockerignore")
if not ignored("target/debug/amqp-bridge") or ignored("target/release/amqp-bridge"):
    problems.append(".dockerignore must exclude target/ but let target/release/amqp-bridge through")
for p in problems:
    print(f"  {p}")
if problems:
    sys.exit(1)
print(f"{copied} COPY sources present and not ignored")
PYTHON
); then
  ok "Dockerfile: $out"
else
  bad "Dockerfile:
$out"
fi

# ---------------------------------------------------------------- bridge configs
if [ -n "${AMQP_BRIDGE_BIN:-}" ]; then
  for cfg in deploy/compose/bridge.yaml deploy/compose/bridge.platform.yaml deploy/kubernetes/base/bridge.yaml; do
    if out=$(env ALIYUN_AK=placeholder ALIYUN_SK=placeholder ALIYUN_UID=1234567890123456 \
      CONSUMER_GROUP=placeholder HOSTNAME=amqp-bridge-0 \
      "$AMQP_BRIDGE_BIN" check --config "$cfg" 2>&1 >/dev/null); then
      ok "amqp-bridge check --config $cfg"
    else
      bad "amqp-bridge check --config $cfg: $out"
    fi
  done
else
  echo "skip: AMQP_BRIDGE_BIN not set (the bridge configurations under deploy/ were not checked)"
fi

echo "check-deploy: $passed passed, $fail failed"
[ "$fail" -eq 0 ]
