#!/usr/bin/env python3
"""Hostile peers against a coordinator (issue 11), with real processes:

1. A peer that announces a 1 GiB frame and streams it must not make the
   coordinator buffer it (RSS went 182 -> 1,219 MiB before the 64 MiB frame
   limit applied): ZeroMQ's ZMQ_MAXMSGSIZE must cut the connection when the
   frame header arrives.
2. A peer that sends 2,000 hellos with a wrong secret must not flood the
   log (each cost ~2 lines, unthrottled): at most a few dozen lines.

    hostile_peer_test.py BUILD_APPS_DIR

Starts rank 0 of a 2-rank `dcpp-worker save` (it binds MASTER_PORT) and
speaks ZMTP 3.0 to it by hand as a DEALER. Then rank 1 joins and the save
must still commit.
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
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0])
    greeting += b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    s.sendall(greeting)
    peer = b""
    while len(peer) < 64:
        chunk = s.recv(64 - len(peer))
        if not chunk:
            fail("the coordinator closed the connection during the greeting")
        peer += chunk
    name, value = b"Socket-Type", b"DEALER"
    body = b"\x05READY" + bytes([len(name)]) + name
    body += struct.pack(">I", len(value)) + value
    s.sendall(bytes([0x04, len(body)]) + body)
    return s


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
                sock = zmtp_dealer(port)
            except (ConnectionRefusedError, socket.timeout):
                if time.time() > deadline or rank0.poll() is not None:
                    fail("rank 0 never listened on port %d" % port)
                time.sleep(0.05)
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
        flood = zmtp_dealer(port)
        hello = b"\xa0dcpp-zmq-2\n1\n2\n\nnot-the-secret"
        for _ in range(2000):
            flood.sendall(b"\x00" + bytes([len(hello)]) + hello)
        time.sleep(0.5)
        flood.close()
        rank1 = subprocess.run(args, env=dict(env, RANK="1"), timeout=60,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        rank0.wait(timeout=60)
        log0.seek(0)
        out0 = log0.read()
        if rank0.returncode != 0 or rank1.returncode != 0:
            fail("the save after the hostile peers failed:\n" + out0
                 + rank1.stdout)
        lines = out0.count("\n")
        refused = out0.count("refused a rank")
        print("rank 0 logged %d lines, %d of them refusals, for 2000 bogus "
              "hellos" % (lines, refused))
        if refused == 0:
            fail("the bogus hellos were not refused:\n" + out0[-2000:])
        if lines > 60:
            fail("2000 bogus hellos logged %d lines" % lines)
        print("hostile_peer_test: big frame refused before buffering, bogus "
              "hellos logged at a bounded rate; the save then committed")
    finally:
        if rank0.poll() is None:
            rank0.kill()


main()
