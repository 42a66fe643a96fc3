#!/usr/bin/env bash
# System packages some tests need, installed once and then left alone: Debian's chromium (the Prefect
# UI checked in a real browser, driven by Playwright from PyPI) and PostgreSQL (a Prefect server on it).
# Idempotent and quick: when both are there it only looks (no apt, no network) and exits 0.
# scripts/test.sh (the README's test command) runs it first. Needs root or sudo to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps.sh: the tests need ${missing[*]}, and apt-get is not here: install them with your package manager" >&2
  exit 1
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "system-deps.sh: the tests need ${missing[*]}: run as root, or with sudo available, or install them yourself (apt-get install ${missing[*]})" >&2
    exit 1
  }
  sudo_cmd=(sudo)
fi
echo "system-deps.sh: installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# Without package lists (a fresh machine) the first install fails: update them once and try again.
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
echo "system-deps.sh: installed ${missing[*]}" >&2
