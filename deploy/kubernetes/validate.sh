#!/usr/bin/env bash
# Validates every manifest in deploy/kubernetes/ against the Kubernetes API schemas with
# kubernetes-validate (PyPI; it ships the schemas, so no cluster is needed), in strict mode
# (unknown fields are errors), for each Kubernetes version in $K8S_VERSIONS.
#
# Idempotent: the tool is installed once into a venv (default <repo>/target/peers/k8s-venv,
# or $EBPF_AGENT_K8S_VENV) and reused.
#
# Usage: deploy/kubernetes/validate.sh [--json OUT]
#   --json OUT  also write every document of every manifest, as one JSON array, to OUT (the
#               tests assert on the manifests' structure with it).
# Exit: 0 when every document validates for every version; 1 otherwise, or when the tool cannot
# be installed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${EBPF_AGENT_K8S_VENV:-$repo/target/peers/k8s-venv}
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes still in common support and the newest the tool knows.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
say() { echo "k8s validate: $*" >&2; }
die() { say "$*"; exit 1; }

json_out=
while [ $# -gt 0 ]; do
    case $1 in
        --json) json_out=${2:?--json needs a file}; shift 2 ;;
        *) die "unknown argument $1 (usage: $0 [--json OUT])" ;;
    esac
done

py=$venv/bin/python
tool=$venv/bin/kubernetes-validate
if ! [ -x "$tool" ] \
    || [ "$("$py" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" \
         != "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$py" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2 \
        || die "pip could not install kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
fi
[ -x "$tool" ] || die "kubernetes-validate is not in $venv"

shopt -s nullglob
manifests=("$here"/*.yaml)
[ ${#manifests[@]} -gt 0 ] || die "no manifests in $here"

for v in $K8S_VERSIONS; do
    say "Kubernetes $v: ${manifests[*]##*/}"
    "$tool" --strict --kubernetes-version "$v" "${manifests[@]}" >&2 \
        || die "a manifest does not validate against Kubernetes $v (strict)"
done

if [ -n "$json_out" ]; then
    # PyYAML comes with kubernetes-validate.
    "$py" - "$json_out" "${manifests[@]}" <<'PY'
import json, sys, yaml
docs = []
for path in sys.argv[2:]:
    with open(path) as f:
        docs += [d for d in yaml.safe_load_all(f) if d is not None]
with open(sys.argv[1], "w") as f:
    json.dump(docs, f)
PY
fi
say "ok"
