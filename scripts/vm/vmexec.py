#!/usr/bin/env python3
"""Run a shell command in a background vmlab guest over its serial console.
Usage: vmexec.py <name> '<command>' [timeout_s]
Prints the command output; exit status = guest command's exit status."""
import os, re, socket, sys, time

name, cmd = sys.argv[1], sys.argv[2]
tmo = float(sys.argv[3]) if len(sys.argv) > 3 else 120
s = socket.socket(socket.AF_UNIX)
s.connect(f"{os.environ.get('BDEV_VMLAB', '/tmp/bdev-vmlab')}/run/{name}/console.sock")
tag = f"VMX{os.getpid()}_{int(time.time())}"
# stty -echo keeps the command itself out of the output
s.sendall(f"stty -echo 2>/dev/null; echo {tag}_START; {{ {cmd} ; }} 2>&1; echo {tag}_RC=$?\n".encode())
buf, end = b"", time.time() + tmo
s.settimeout(1)
while time.time() < end:
    try:
        c = s.recv(65536)
    except socket.timeout:
        continue
    if not c:
        break
    buf += c
    m = re.search(rf"{tag}_RC=(\d+)".encode(), buf)
    if m:
        out = buf[:m.start()].decode(errors="replace").replace("\r", "")
        out = re.sub(r"\x1b\[[0-9;]*[a-zA-Z]", "", out)
        lines = out.split("\n")
        # output starts after the line that is exactly the start marker
        st = [i for i, l in enumerate(lines) if l.strip() == f"{tag}_START"]
        lines = lines[st[-1] + 1:] if st else lines
        sys.stdout.write("\n".join(lines).strip("\n") + "\n")
        sys.exit(int(m.group(1)))
sys.stdout.write(buf.decode(errors="replace"))
print(f"vmexec: timeout after {tmo}s", file=sys.stderr)
sys.exit(124)
