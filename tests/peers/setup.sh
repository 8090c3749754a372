#!/usr/bin/env bash
# Installs the real peers that agent/tests/sinks_peers.rs talks to, into one project-local
# directory. Idempotent: what is already there is kept.
#
#   DIR/node_modules/statsd   Etsy's statsd daemon, from the npm registry (package `statsd`)
#   DIR/venv                  Python with the `protobuf` runtime and `grpcio-tools`, from PyPI
#   DIR/proto/riemann.proto   from Debian's riemann-c-client source package (apt-get source)
#   DIR/py/riemann_pb2.py     that proto compiled by grpcio-tools' protoc
#
# The Riemann decoder (tests/peers/riemann_receiver.py + DIR/py) shares no code with the agent.
#
# Usage: tests/peers/setup.sh [DIR]
#   DIR defaults to $EBPF_AGENT_PEERS_DIR, else <repo>/target/peers.
# Needs: node + npm, python3 (with venv), apt-get (Debian). Runs without root except to install
# a missing Node.js with apt-get.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-${EBPF_AGENT_PEERS_DIR:-$repo/target/peers}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
say() { echo "peers setup: $*" >&2; }
die() { say "$*"; exit 1; }

STATSD_VERSION=0.9.0

# --- Etsy statsd (npm) ---------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Node.js and npm with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        die "node and npm are needed: install them (Debian: apt-get install nodejs npm) and run again"
    fi
fi
if [ ! -f "$dir/node_modules/statsd/stats.js" ] \
    || [ "$(node -p "require('$dir/node_modules/statsd/package.json').version")" != "$STATSD_VERSION" ]; then
    say "installing statsd@$STATSD_VERSION from npm into $dir/node_modules"
    # Optional dependencies (syslog backend, proxy) are not used; --ignore-scripts: nothing to build.
    npm install --prefix "$dir" --no-audit --no-fund --omit=optional --ignore-scripts \
        "statsd@$STATSD_VERSION" >&2
fi
[ -f "$dir/node_modules/statsd/stats.js" ] || die "statsd did not install into $dir/node_modules"

# --- Python protobuf runtime + grpcio-tools (PyPI) ------------------------------------------
py=$dir/venv/bin/python
if ! [ -x "$py" ] || ! "$py" -c 'import google.protobuf, grpc_tools.protoc' 2>/dev/null; then
    say "creating $dir/venv with protobuf and grpcio-tools from PyPI"
    python3 -m venv "$dir/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$py" -m pip install --quiet --disable-pip-version-check 'grpcio-tools>=1.60,<2' protobuf >&2
fi

# --- riemann.proto from Debian's riemann-c-client sources ----------------------------------
proto=$dir/proto/riemann.proto
if [ ! -s "$proto" ]; then
    command -v apt-get >/dev/null || die "apt-get is needed to fetch Debian's riemann-c-client sources"
    apt=$dir/apt
    mkdir -p "$apt/lists/partial" "$apt/src"
    # A private deb-src list made from the machine's own Debian entry (same mirror and release),
    # with private state: the system's apt configuration is left alone.
    python3 - "$apt/sources.list" <<'PY'
import glob, os, re, sys

def entries():
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", open(f).read()):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    yield uri, suite, fields.get("components", "").split(), fields.get("signed-by", "")
    for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if not os.path.exists(f):
            continue
        for line in open(f):
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if m:
                opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                yield m.group(2), m.group(3), m.group(4).split(), opts.get("signed-by", "")

for uri, suite, comps, key in entries():
    # The release itself (e.g. bookworm), not -updates / -security / -backports.
    if "main" in comps and "-" not in suite and "/" not in suite:
        if not key and os.path.exists("/usr/share/keyrings/debian-archive-keyring.gpg"):
            key = "/usr/share/keyrings/debian-archive-keyring.gpg"
        opt = f"[signed-by={key}] " if key and not key.startswith("-----") else ""
        open(sys.argv[1], "w").write(f"deb-src {opt}{uri} {suite} main\n")
        sys.exit(0)
sys.exit("no Debian 'deb ... main' entry found in /etc/apt: cannot locate riemann-c-client's sources")
PY
    aptq=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
          -o APT::Sandbox::User=root)
    say "fetching Debian's riemann-c-client source package for riemann.proto"
    apt-get "${aptq[@]}" -qq update >&2
    (cd "$apt/src" && apt-get "${aptq[@]}" -qq source --download-only riemann-c-client >&2)
    orig=$(ls "$apt"/src/riemann-c-client_*.orig.tar.* 2>/dev/null | head -n1)
    [ -n "$orig" ] || die "riemann-c-client's source tarball did not download"
    mkdir -p "$dir/proto"
    tar -xOf "$orig" --wildcards '*/lib/riemann/proto/riemann.proto' >"$proto.tmp"
    [ -s "$proto.tmp" ] || die "no lib/riemann/proto/riemann.proto in $orig"
    mv "$proto.tmp" "$proto"
fi

# --- riemann_pb2.py ------------------------------------------------------------------------
if [ ! -s "$dir/py/riemann_pb2.py" ] || [ "$proto" -nt "$dir/py/riemann_pb2.py" ]; then
    mkdir -p "$dir/py"
    "$py" -m grpc_tools.protoc -I "$dir/proto" --python_out="$dir/py" "$proto"
fi
"$py" -c "import sys; sys.path.insert(0, '$dir/py'); import riemann_pb2; riemann_pb2.Msg(ok=True)" \
    || die "the compiled riemann_pb2 does not load"

say "ready in $dir"
