#!/usr/bin/env python3
"""Hostile peers against a coordinator (issue 11), with real processes.

The coordinator (rank 0 of a 2-rank `dcpp-worker save`, which binds
MASTER_PORT) runs with a DCPP_SECRET, so its socket is a CURVE server.
Peers without the job's key, speaking ZMTP 3.0 by hand:

1. A peer that announces a 1 GiB frame and streams it must not make the
   coordinator buffer it (RSS went 182 -> 1,219 MiB before the 64 MiB frame
   limit applied): the connection is cut at the greeting (no CURVE) or at
   the frame header (ZMQ_MAXMSGSIZE), RSS stays flat.
2. 2,000 peers that try a handshake without the key must not flood the log
   (each cost ~2 lines, unthrottled): at most a few dozen lines.
3. N idle connections (20,000, or what the file-descriptor limit allows)
   must not stop the save (they exhausted the coordinator's descriptors:
   `Too many open files`): the coordinator closes connections beyond its
   cap at once and idle ones after the handshake timeout.

    hostile_peer_test.py BUILD_APPS_DIR

Then rank 1 joins, while the idle connections are still held, and the save
must commit.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

apps = sys.argv[1]
RSS_LIMIT_MIB = 256
FRAME = 1 << 30


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def zmtp_dealer(port):
    """A ZMTP 3.0 DEALER with the NULL mechanism (no key). Returns the
    socket and whether the coordinator let it past the greeting."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0])
    greeting += b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    s.sendall(greeting)
    peer = b""
    while len(peer) < 64:
        try:
            chunk = s.recv(64 - len(peer))
        except (ConnectionResetError, socket.timeout):
            chunk = b""
        if not chunk:
            return s, False
        peer += chunk
    name, value = b"Socket-Type", b"DEALER"
    body = b"\x05READY" + bytes([len(name)]) + name
    body += struct.pack(">I", len(value)) + value
    s.sendall(bytes([0x04, len(body)]) + body)
    return s, True


def idle_connections(port, want):
    """Opens up to `want` TCP connections that never send a byte."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(want, hard - 64)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError as e:
            s.close()
            print("stopped opening idle connections at %d: %s"
                  % (len(socks), e))
            break
        socks.append(s)
    return socks


def main():
    tmp = tempfile.mkdtemp()
    port = free_port()
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), DCPP_SECRET="big-frame-test-secret")
    args = [os.path.join(apps, "dcpp-worker"), "save", "--dir",
            os.path.join(tmp, "ckpt"), "--size-mb", "2", "--step-timeout",
            "30"]
    # A file, not a pipe: a flood of log lines must not block rank 0.
    log0 = open(os.path.join(tmp, "rank0.log"), "w+")
    rank0 = subprocess.Popen(args, env=dict(env, RANK="0"), stdout=log0,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 20
        sock = None
        while sock is None:
            try:
                sock, past_greeting = zmtp_dealer(port)
            except (ConnectionRefusedError, socket.timeout):
                if time.time() > deadline or rank0.poll() is not None:
                    fail("rank 0 never listened on port %d" % port)
                time.sleep(0.05)
        print("a peer without the key was %s"
              % ("let past the greeting" if past_greeting
                 else "cut at the greeting"))
        base = rss_mib(rank0.pid)
        peak = base
        sent = 0
        block = b"\x00" * (4 << 20)
        cut = False
        try:
            sock.sendall(b"\x02" + struct.pack(">Q", FRAME))
            while sent < FRAME:
                sock.sendall(block)
                sent += len(block)
                peak = max(peak, rss_mib(rank0.pid))
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            cut = True
        finally:
            sock.close()
        time.sleep(0.2)
        peak = max(peak, rss_mib(rank0.pid))
        print("rank 0 RSS %.0f MiB before, peak %.0f MiB; %d MiB streamed; "
              "connection %s" % (base, peak, sent >> 20,
                                  "cut" if cut else "kept"))
        if peak - base > RSS_LIMIT_MIB:
            fail("the coordinator buffered the frame: RSS grew by %.0f MiB"
                 % (peak - base))
        if not cut:
            fail("the coordinator accepted a 1 GiB frame without closing "
                 "the connection")
        # A hello in clear, as the old protocol sent it, from 2,000 peers.
        hello = b"\xa0dcpp-zmq-3\n1\n2\n"
        for _ in range(2000):
            try:
                flood, ok = zmtp_dealer(port)
                if ok:
                    flood.sendall(b"\x00" + bytes([len(hello)]) + hello)
                flood.close()
            except OSError:
                pass
        time.sleep(0.5)
        idle = idle_connections(port, 20000)
        t_idle = time.time()
        time.sleep(1.0)
        print("%d idle connections open; rank 0 holds %d descriptors"
              % (len(idle), len(os.listdir("/proc/%d/fd" % rank0.pid))))
        rank1 = subprocess.run(args, env=dict(env, RANK="1"), timeout=60,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        print("rank 1 finished %.1f s after the idle connections opened"
              % (time.time() - t_idle))
        for s in idle:
            s.close()
        rank0.wait(timeout=60)
        log0.seek(0)
        out0 = log0.read()
        if rank0.returncode != 0 or rank1.returncode != 0:
            fail("the save after the hostile peers failed:\n" + out0
                 + rank1.stdout)
        lines = out0.count("\n")
        refused = out0.count("refused a peer at the handshake")
        print("rank 0 logged %d lines, %d of them refusals, for 2000 peers "
              "without the key and %d idle connections"
              % (lines, refused, len(idle)))
        if refused == 0:
            fail("the peers without the key were not refused:\n"
                 + out0[-2000:])
        if lines > 80:
            fail("2000 peers without the key logged %d lines" % lines)
        if "Too many open files" in out0 + rank1.stdout:
            fail("descriptors ran out:\n" + out0[-2000:] + rank1.stdout)
        print("hostile_peer_test: big frame refused before buffering, peers "
              "without the key refused and logged at a bounded rate, idle "
              "connections capped; the save then committed")
    finally:
        if rank0.poll() is None:
            rank0.kill()


main()
