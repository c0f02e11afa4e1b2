# A flood run as another user: opens `n` connections to keyward, starts a request head on each
# and never finishes it, prints "ready", then watches for `wait` seconds how keyward ends them.
# Prints a JSON report: how many are still open, and the status lines keyward sent.
import json
import select
import socket
import sys
import time

cfg = json.loads(sys.argv[1])
socks = []
for _ in range(cfg["n"]):
    s = socket.create_connection((cfg["host"], cfg["port"]))
    s.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: localhost\r\n")
    socks.append(s)
print("ready", flush=True)
start = time.time()
still = set(socks)
statuses = {}
last_close = 0.0
while still and time.time() - start < cfg["wait"]:
    readable, _, _ = select.select(list(still), [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 "):
            code = data[9:12].decode()
            statuses[code] = statuses.get(code, 0) + 1
        if not data or b"connection: close" in data.lower():
            still.discard(s)
            s.close()
            last_close = time.time() - start
print(json.dumps({"still_open": len(still), "statuses": statuses, "last_close": last_close}))
