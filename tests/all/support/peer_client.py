# A client run as another user (the test starts it with that uid): sends requests to keyward,
# one connection each, and prints what came back as JSON.
#
# argv[1] is a JSON object:
#   target:   "tcp:HOST:PORT", "tcp6:HOST:PORT" or "unix:PATH"
#   method, path, body, headers: the request (POST /v1/responses by default)
#   requests: how many (default 1); threads: how many at once (default 1)
#   ports:    optional list of local ports to connect from, shared with other clients so that
#             the same ports are reused by different users
import json
import socket
import sys
import threading
import time

cfg = json.loads(sys.argv[1])
kind, _, rest = cfg["target"].partition(":")
method = cfg.get("method", "POST")
path = cfg.get("path", "/v1/responses")
body = cfg.get("body", '{"model":"gpt-5","input":"hi"}').encode()
headers = cfg.get("headers", {})
ports = cfg.get("ports") or []
lock = threading.Lock()
results = {"statuses": {}, "bodies": {}, "ports": [], "errors": []}


def connect(i):
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(rest)
        return s, None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    last = None
    # A shared port may be busy (in use, or its 4-tuple in TIME_WAIT): try the others, for a
    # few rounds.
    for attempt in range(len(ports) * 50 or 1):
        if ports and attempt and attempt % len(ports) == 0:
            time.sleep(0.01)
        s = socket.socket(family, socket.SOCK_STREAM)
        local = None
        if ports:
            local = ports[(i + attempt) % len(ports)]
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, local))
            except OSError as e:
                s.close()
                last = e
                continue
        try:
            s.connect((host, int(port)))
            return s, local
        except OSError as e:
            s.close()
            last = e
    raise last


def one(i):
    try:
        s, local = connect(i)
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        s.sendall(head.encode() + b"\r\n" + (body if method == "POST" else b""))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "none"
        text = data.partition(b"\r\n\r\n")[2].decode(errors="replace")
        with lock:
            results["statuses"][status] = results["statuses"].get(status, 0) + 1
            results["bodies"].setdefault(status, text)
            if local is not None:
                results["ports"].append(local)
    except OSError as e:
        with lock:
            results["errors"].append(str(e))


def worker(start, step, total):
    for i in range(start, total, step):
        one(i)


n = cfg.get("requests", 1)
t = cfg.get("threads", 1)
threads = [threading.Thread(target=worker, args=(k, t, n)) for k in range(t)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(json.dumps(results))
