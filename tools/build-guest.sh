#!/usr/bin/env bash
# Build (or find cached) the QEMU test guest of sod_testbed.qemu: the stock Debian kernel and a
# busybox-static initramfs with testbed/sod_testbed/qemu/guest-init.sh as /init, both from Debian
# packages fetched with `apt-get download` (never installed). Cached under
# $SOD_CACHE/qemu-guest/<key>, the key hashing the package versions and the init script.
# Prints the cache directory. QEMU itself comes from `make deps`.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${VENV:-.venv}/bin/python
[ -x "$py" ] || py=python3
PYTHONPATH=testbed${PYTHONPATH:+:$PYTHONPATH} exec "$py" -m sod_testbed.qemu.image "$@"
