#!/bin/bash
# boot.sh - boot the project's test guest in QEMU for one scenario (a real,
# independent NVMe peer: see README.md beside this file).
#
# Usage: scripts/vm/boot.sh [options]
#   -s, --scenario S   tcp | rdma | vfio-iommu | vfio-noiommu | shell  (default shell)
#   -a, --accel A      kvm | tcg | auto (default auto: try kvm, fall back to tcg)
#   -k, --kver VER     guest kernel version (default newest in /lib/modules)
#   --kernel-pkg PKG   boot a downloaded-not-installed Debian kernel package
#                      (see mkinitramfs.sh --kernel-pkg), e.g.
#                      linux-image-6.12.117+deb12-amd64-unsigned
#   -m, --mem MB       guest RAM (default 1024)
#   -c, --cpus N       vCPUs (default 2)
#   --io SECS          run an in-guest nvme-oF loopback I/O test for SECS seconds
#   --poweroff         power off after the scenario (foreground, batch use)
#   --bg               run in background; console log in run/<name>/console.log,
#                      console socket run/<name>/console.sock, HMP monitor
#                      run/<name>/monitor.sock, pid in run/<name>/qemu.pid
#   --name NAME        instance name (default = scenario); used for run dir
#   --fwd-base PORT    host port P for hostfwd 127.0.0.1:P -> guest 4420 and
#                      127.0.0.1:P+1 -> guest 8009 (default: first free P >= 14520);
#                      written to run/<name>/ports as
#                      "nvme_tcp=P discovery=P+1 subnqn=NQN"
#   --wait-ready SECS  with --bg: wait until the guest prints VMLAB-READY (default 300);
#                      on timeout the guest is stopped and boot.sh exits 1
#   --owner-pid PID    with --bg: stop the guest when process PID exits (a watcher
#                      polls every 2 s), so a killed test leaves no guest behind
#   --max-life SECS    with --bg: stop the guest after SECS seconds whatever happens
#   --stop NAME        stop a background instance (by its pidfile) and exit
#   --prepare          only install the packages and build the initramfs (and the
#                      kernel-pkg tree), then exit 0 without booting
#   --initrd FILE      initramfs to use (default initramfs-<kver>.cpio.gz, or
#                      initramfs-<kver>-noiommu.cpio.gz for vfio-noiommu; built if missing)
#   --share DIR        export host DIR to the guest via virtio-9p, mounted at /mnt/host
#   --run CMD          guest runs CMD (no spaces; e.g. /mnt/host/t.sh) after the
#                      scenario and prints VMLAB-RUN-RC=<rc>
#   --extra "ARGS"     extra qemu args
# Foreground mode puts the serial console on stdio (Ctrl-A X to quit).
# Work dir: $BDEV_VMLAB (default /tmp/bdev-vmlab). Exit status: 0 ready,
# 1 failure (qemu exited / timeout), 2 usage, 3 tcp target commands failed.
set -euo pipefail
LAB=${BDEV_VMLAB:-/tmp/bdev-vmlab}   # work dir: images, kernels, run state
HERE=$(cd "$(dirname "$0")" && pwd)
SCEN=shell ACCEL=auto KVER="" MEM=1024 CPUS=2 IO="" POWEROFF=0 BG=0 NAME="" FWD=auto WAIT=300 EXTRA="" INITRD="" SHARE="" RUNCMD="" KPKG=""
OWNER="" MAXLIFE="" PREPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -s|--scenario) SCEN=$2; shift 2;;
    -a|--accel) ACCEL=$2; shift 2;;
    -k|--kver) KVER=$2; shift 2;;
    --kernel-pkg) KPKG=$2; shift 2;;
    -m|--mem) MEM=$2; shift 2;;
    -c|--cpus) CPUS=$2; shift 2;;
    --io) IO=$2; shift 2;;
    --poweroff) POWEROFF=1; shift;;
    --bg) BG=1; shift;;
    --name) NAME=$2; shift 2;;
    --fwd-base) FWD=$2; shift 2;;
    --wait-ready) WAIT=$2; shift 2;;
    --extra) EXTRA=$2; shift 2;;
    --initrd) INITRD=$2; shift 2;;
    --share) SHARE=$2; shift 2;;
    --run) RUNCMD=$2; shift 2;;
    --owner-pid) OWNER=$2; shift 2;;
    --max-life) MAXLIFE=$2; shift 2;;
    --prepare) PREPARE=1; shift;;
    --stop)
      pf=$LAB/run/$2/qemu.pid   # qemu deletes its pidfile on exit
      pid=$(cat "$pf" 2>/dev/null || true)
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "stopped $2 (pid $pid)"
      else echo "$2 not running"; fi
      rm -f "$pf"; exit 0;;
    -h|--help) awk 'NR>1 && /^#/ {print; next} NR>1 {exit}' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
[ -n "$NAME" ] || NAME=$SCEN
case "$SCEN" in tcp|rdma|vfio-iommu|vfio-noiommu|shell) ;; *) echo "unknown scenario $SCEN" >&2; exit 2;; esac
case "$NAME" in */*|.|..|"") echo "bad instance name '$NAME'" >&2; exit 2;; esac
mkdir -p "$LAB"

command -v qemu-system-x86_64 >/dev/null || { apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86; }
MKOPT=()
if [ -n "$KPKG" ]; then
  KROOT=$LAB/kernels/$KPKG
  [ -d "$KROOT/lib/modules" ] || "$HERE/mkinitramfs.sh" --kernel-pkg "$KPKG"
  KVER=$(ls -1 "$KROOT/lib/modules" | sort -V | tail -1)
  KERNEL=$KROOT/boot/vmlinuz-$KVER
  MKOPT=(--kernel-pkg "$KPKG")
else
  [ -n "$KVER" ] || KVER=$(ls -1 /lib/modules 2>/dev/null | sort -V | tail -1)
  if [ -z "$KVER" ] || [ ! -f /boot/vmlinuz-$KVER ]; then
    "$HERE/mkinitramfs.sh"; KVER=$(ls -1 /lib/modules | sort -V | tail -1)
  fi
  KERNEL=/boot/vmlinuz-$KVER
  MKOPT=(--kver "$KVER")
fi
if [ -z "$INITRD" ]; then
  if [ "$SCEN" = vfio-noiommu ]; then
    INITRD=$LAB/initramfs-$KVER-noiommu.cpio.gz
    [ -f "$INITRD" ] || "$HERE/mkinitramfs.sh" "${MKOPT[@]}" --noiommu
  else
    INITRD=$LAB/initramfs-$KVER.cpio.gz
    [ -f "$INITRD" ] || "$HERE/mkinitramfs.sh" "${MKOPT[@]}"
  fi
fi

[ -r "$KERNEL" ] && [ -r "$INITRD" ] || { echo "boot.sh: $KERNEL or $INITRD is not readable (not root?)" >&2; exit 1; }
[ "$PREPARE" = 1 ] && { echo "boot.sh: prepared kernel=$KERNEL initrd=$INITRD"; exit 0; }

RUN=$LAB/run/$NAME
mkdir -p "$RUN"
if [ -f "$RUN/qemu.pid" ] && kill -0 "$(cat "$RUN/qemu.pid" 2>/dev/null)" 2>/dev/null; then
  echo "boot.sh: instance $NAME already running (pid $(cat "$RUN/qemu.pid")); --stop $NAME first" >&2; exit 1
fi
APPEND="console=ttyS0 panic=-1 loglevel=4 vmlab.scenario=${SCEN%%-*}"
[ -n "$IO" ] && APPEND="$APPEND vmlab.io=$IO"
[ -n "$RUNCMD" ] && APPEND="$APPEND vmlab.run=$RUNCMD"
[ "$POWEROFF" = 1 ] && APPEND="$APPEND vmlab.poweroff=1"

MACHINE="-machine q35"
DEV=""
case "$SCEN" in
  vfio-iommu)
    MACHINE="-machine q35,kernel-irqchip=split"
    DEV="-device intel-iommu,intremap=on,caching-mode=on"
    APPEND="$APPEND intel_iommu=on iommu=pt"
    ;;
  vfio-noiommu)
    APPEND="$APPEND vmlab.noiommu=1 vfio.enable_unsafe_noiommu_mode=1"
    ;;
esac
case "$SCEN" in
  vfio-*)
    [ -f "$LAB/nvm.img" ] || truncate -s 1G "$LAB/nvm.img"
    DEV="$DEV -drive file=$LAB/nvm.img,if=none,id=nvm,format=raw -device nvme,serial=deadbeef,drive=nvm"
    ;;
esac

if [ -n "$SHARE" ]; then
  DEV="$DEV -virtfs local,path=$SHARE,mount_tag=host,security_model=none,id=host"
  APPEND="$APPEND vmlab.share=1"
fi
port_busy() {   # is anything listening on 127.0.0.1/0.0.0.0 TCP port $1?
  if command -v ss >/dev/null; then ss -Hltn "sport = :$1" 2>/dev/null | grep -q . ; return; fi
  local hex; hex=$(printf ':%04X ' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v h="$hex" 'NR>1 && $4=="0A" && index($2 " ", h) {f=1} END {exit !f}'
}
pick_ports() {
  if [ "$FWD_ARG" = auto ]; then
    FWD=${1:-14520}
    while port_busy $FWD || port_busy $((FWD + 1)); do FWD=$((FWD + 2)); done
  fi
  NQN=nqn.2024-01.io.vmlab:test   # keep in sync with scenarios.sh in mkinitramfs.sh
  echo "nvme_tcp=$FWD discovery=$((FWD + 1)) subnqn=$NQN" > "$RUN/ports"
  NET="-netdev user,id=n0,hostfwd=tcp:127.0.0.1:$FWD-:4420,hostfwd=tcp:127.0.0.1:$((FWD + 1))-:8009 -device virtio-net-pci,netdev=n0"
}
FWD_ARG=$FWD
pick_ports

pick_accel() {
  case "$ACCEL" in
    kvm) echo "-accel kvm -cpu host";;
    tcg) echo "-accel tcg,thread=multi -cpu max";;
    auto)
      # Does KVM really run a stock guest kernel here? (On PVM-only hosts it does
      # not.) Probe once per host kernel + guest kernel and cache the answer.
      local cache=$LAB/.accel-$(uname -r)-$KVER
      if [ ! -f "$cache" ]; then
        if [ -w /dev/kvm ] && timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic \
              -no-reboot -nodefaults -serial stdio -kernel "$KERNEL" -initrd "$INITRD" \
              -append "console=ttyS0 panic=-1 vmlab.poweroff=1" 2>/dev/null | grep -q VMLAB-INIT-START; then
          echo kvm > "$cache"
        else
          echo tcg > "$cache"
        fi
      fi
      if [ "$(cat "$cache")" = kvm ]; then echo "-accel kvm -cpu host"; else echo "-accel tcg,thread=multi -cpu max"; fi;;
  esac
}
ACC=$(pick_accel)
qemu_cmd() {
  QEMU=(qemu-system-x86_64 $MACHINE $ACC -smp "$CPUS" -m "$MEM" -no-reboot
        -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
        $NET $DEV -nodefaults -display none -pidfile "$RUN/qemu.pid" $EXTRA)
}
qemu_cmd

if [ "$BG" = 0 ]; then
  echo "boot.sh: scenario=$SCEN kernel=$KERNEL initrd=$INITRD accel='$ACC' mem=${MEM}M cpus=$CPUS hostfwd 127.0.0.1:$FWD->4420 127.0.0.1:$((FWD + 1))->8009"
  exec "${QEMU[@]}" -serial mon:stdio
fi

stop_guest() {   # stop_guest PID: TERM, then KILL after 5 s
  kill "$1" 2>/dev/null || return 0
  for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$1" 2>/dev/null || true
}

# Launch under a lock, so that concurrent boots (parallel tests) never pick the
# same free port pair: qemu -daemonize returns once its hostfwd sockets listen.
# If a port was taken between the check and the bind anyway, try the next pair.
exec 9>"$LAB/.boot.lock"
flock -w 120 9 || { echo "boot.sh: could not lock $LAB/.boot.lock" >&2; exit 1; }
pick_ports; qemu_cmd   # again, now under the lock
for attempt in 1 2 3 4 5; do
  rm -f "$RUN/console.log" "$RUN/console.sock" "$RUN/monitor.sock" "$RUN/qemu.err"
  echo "boot.sh: scenario=$SCEN kernel=$KERNEL initrd=$INITRD accel='$ACC' mem=${MEM}M cpus=$CPUS hostfwd 127.0.0.1:$FWD->4420 127.0.0.1:$((FWD + 1))->8009"
  T0=$(date +%s.%N)
  if "${QEMU[@]}" -chardev socket,id=con,path="$RUN/console.sock",server=on,wait=off,logfile="$RUN/console.log" \
       -serial chardev:con -monitor unix:"$RUN/monitor.sock",server=on,wait=off -daemonize 2>"$RUN/qemu.err" 9>&-; then
    break
  fi
  cat "$RUN/qemu.err" >&2
  if [ "$FWD_ARG" = auto ] && [ $attempt -lt 5 ] && grep -qi "forward" "$RUN/qemu.err"; then
    pick_ports $((FWD + 2)); qemu_cmd; continue
  fi
  echo "boot.sh: qemu failed to start" >&2; exit 1
done
exec 9>&-
QPID=$(cat "$RUN/qemu.pid")
echo "boot.sh: started pid $QPID, console log $RUN/console.log, ports $(cat "$RUN/ports")"
if [ -n "$OWNER$MAXLIFE" ]; then
  # watcher: stops the guest when the owner process exits or the life time is up
  # (detached, stdio on /dev/null so that callers reading our output are not held)
  DEADLINE=$(( $(date +%s) + ${MAXLIFE:-315360000} ))
  nohup setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do
      if [ -n "$2" ] && ! kill -0 "$2" 2>/dev/null; then break; fi
      [ "$(date +%s)" -lt "$3" ] || break
      sleep 2
    done
    if kill -0 "$1" 2>/dev/null; then
      echo "watcher: stopping guest pid $1 (owner ${2:-none} gone or life time over)" >> "$4/watcher.log"
      kill "$1"; sleep 5; kill -9 "$1" 2>/dev/null
    fi' watcher "$QPID" "$OWNER" "$DEADLINE" "$RUN" </dev/null >/dev/null 2>&1 &
fi
end=$(( $(date +%s) + WAIT ))
while [ "$(date +%s)" -lt "$end" ]; do
  if grep -q "VMLAB-INIT-START" "$RUN/console.log" 2>/dev/null && [ -z "${TI:-}" ]; then
    TI=$(date +%s.%N); echo "boot.sh: init running after $(awk "BEGIN{printf \"%.2f\", $TI - $T0}") s"
  fi
  if grep -q "VMLAB-READY" "$RUN/console.log" 2>/dev/null; then
    echo "boot.sh: scenario ready after $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $T0}") s"
    if grep -q "VMLAB-CMD-FAILED" "$RUN/console.log"; then
      grep "VMLAB-CMD-FAILED" "$RUN/console.log" | sed 's/^/boot.sh: guest: /' >&2
      if [ "$SCEN" = tcp ]; then echo "boot.sh: tcp scenario had failures (guest left running; --stop $NAME)" >&2; exit 3; fi
    fi
    exit 0
  fi
  kill -0 "$QPID" 2>/dev/null || { echo "boot.sh: qemu exited"; tail -20 "$RUN/console.log"; exit 1; }
  sleep 0.2
done
echo "boot.sh: timeout after ${WAIT}s waiting for VMLAB-READY; stopping the guest"
tail -20 "$RUN/console.log" 2>/dev/null || true
stop_guest "$QPID"; rm -f "$RUN/qemu.pid"; exit 1
