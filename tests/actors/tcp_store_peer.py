# torch's own TCPStore for tcp_store_test.cpp, under torch 1.13
# (/usr/bin/python3) or 2.6 (the chroot of scripts/torch2/run.sh):
#   tcp_store_peer.py serve              a server on a free port: prints
#                                        "port N torch V", serves until its
#                                        stdin closes
#   tcp_store_peer.py get PORT KEY       prints the value of KEY (hex)
#   tcp_store_peer.py set PORT KEY TEXT  sets KEY to TEXT, or to TEXT*COUNT
#                        [COUNT]         bytes when COUNT is given
import datetime
import sys

import torch
import torch.distributed as dist

mode = sys.argv[1]
if mode == "serve":
    store = dist.TCPStore("127.0.0.1", 0, is_master=True,
                          wait_for_workers=False)
    print("port", store.port, "torch", torch.__version__, flush=True)
    sys.stdin.read()
    sys.exit(0)

port, key = int(sys.argv[2]), sys.argv[3]
client = dist.TCPStore("127.0.0.1", port, is_master=False,
                       wait_for_workers=False,
                       timeout=datetime.timedelta(seconds=20))
if mode == "get":
    print(client.get(key).hex())
elif mode == "set":
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    client.set(key, sys.argv[4] * count)
else:
    sys.exit("unknown mode " + mode)
