#!/usr/bin/env bash
# Debian packages that pip cannot provide, installed only when missing (idempotent).
#   gl       libosmesa6: gtvautoseg serve renders the Slicer views offscreen (no screen, no GPU)
#   browser  chromium + fonts: the browser tests drive Debian's chromium with Playwright
#            (Playwright's own browser download is not used)
# Usage: bash scripts/setup_system.sh gl [browser]. Needs root or sudo to install.
set -euo pipefail
want=()
for part in "$@"; do
  case "$part" in
    gl) ldconfig -p 2>/dev/null | grep -q 'libOSMesa\.so' || want+=(libosmesa6) ;;
    browser) command -v chromium >/dev/null 2>&1 || want+=(chromium fonts-liberation) ;;
    *) echo "setup_system.sh: unknown part '$part' (gl, browser)" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_system.sh: no apt-get here; install the equivalents of: ${want[*]}" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "setup_system.sh: run as root (or with sudo) to install: ${want[*]}" >&2
    exit 1
  fi
fi
echo "setup_system.sh: installing ${want[*]}" >&2
"${sudo[@]}" apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
