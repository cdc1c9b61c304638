#!/bin/busybox sh
# /init of the test guest of sod_testbed.qemu (busybox-static in an initramfs, no disk).
#
# Options come from the kernel command line (mig.KEY=VALUE):
#   mig.mode=idle|dirty   idle: heartbeat only; dirty: also rewrite a working set in a loop
#   mig.wss=MiB           dirty: size of the working set (a tmpfs file), a multiple of mig.chunk
#   mig.rate=MiB/s        dirty: write rate; 0 = as fast as the vCPU can (default 0)
#   mig.chunk=MiB         dirty: bytes per dd write (default 4)
#   mig.intact=MiB        size of the integrity region (default 1)
#
# Everything the host reads is a console line starting with "MIGTEST " (sod_testbed.qemu.console):
#   MIGTEST BOOT                      /init started (a second one on a destination = a reboot)
#   MIGTEST READY mode=M sum=S        set up; S = md5 of the integrity region, written once
#   MIGTEST beat=N sum=S up=U         once a second: N counts up by one, S must stay the boot sum
#   MIGTEST DIRTY FILLED wss=W        the working set is allocated; the write rate is steady now
#   MIGTEST w=MiB up=U                every 64 MiB written (the host derives the guest's rate)
# Written data is random, not zeros: QEMU sends a zero page as a flag, not as 4 KiB.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs -o size=95% tmpfs /run
exec >/dev/ttyS0 2>&1 </dev/null
echo "MIGTEST BOOT"

mode=idle wss=64 rate=0 chunk=4 intact=1
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    mig.mode=*) mode=${kv#*=} ;;
    mig.wss=*) wss=${kv#*=} ;;
    mig.rate=*) rate=${kv#*=} ;;
    mig.chunk=*) chunk=${kv#*=} ;;
    mig.intact=*) intact=${kv#*=} ;;
  esac
done

# /proc/uptime ("123.45 ...") in centiseconds; "1" + the decimals avoids octal "08".
centis() { echo $((${1%.*} * 100 + 1${1#*.} - 100)); }

dirty() {
  dd if=/dev/urandom of=/run/chunk bs=1M count="$chunk" 2>/dev/null
  n=$((wss / chunk)) i=0 w=0
  read -r up _ </proc/uptime
  t0=$(centis "$up")
  while :; do
    dd if=/run/chunk of=/run/wss bs=1M count="$chunk" seek=$((i * chunk)) conv=notrunc 2>/dev/null
    i=$(((i + 1) % n)) w=$((w + chunk))
    read -r up _ </proc/uptime
    [ "$w" -eq "$wss" ] && echo "MIGTEST DIRTY FILLED wss=$wss up=$up"
    [ $((w % 64)) -lt "$chunk" ] && echo "MIGTEST w=$w up=$up"
    [ "$rate" -gt 0 ] || continue
    # Pace to `rate`: sleep until w MiB are due; after a stall (a migration's pause, a loaded
    # host) resume the rate from now instead of bursting to catch up by more than 1 s.
    now=$(centis "$up") due=$((t0 + w * 100 / rate))
    if [ "$now" -gt $((due + 100)) ]; then
      t0=$((now - w * 100 / rate))
    elif [ "$due" -gt "$now" ]; then
      usleep $(((due - now) * 10000))
    fi
  done
}

dd if=/dev/urandom of=/run/intact bs=1M count="$intact" 2>/dev/null
set -- $(md5sum /run/intact)
echo "MIGTEST READY mode=$mode sum=$1"
[ "$mode" = dirty ] && dirty &

beat=0
while :; do
  beat=$((beat + 1))
  set -- $(md5sum /run/intact)
  read -r up _ </proc/uptime
  echo "MIGTEST beat=$beat sum=$1 up=$up"
  sleep 1
done
