#!/usr/bin/env bash
# Install the Debian packages the project needs (swtpm, the TSS2 libraries that tpm2-pytss
# compiles against, tpm2-tools for debugging; QEMU and iproute2 for the real live migrations of
# sod_testbed.qemu, whose guest tools/build-guest.sh builds), only when one is missing.
set -euo pipefail
pkgs=(swtpm swtpm-tools libtss2-dev tpm2-tools pkg-config gcc python3-dev
  qemu-system-x86 iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] Debian packages: present" >&2
  exit 0
fi
echo "[deps] installing Debian packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[deps] Debian packages: installed" >&2
