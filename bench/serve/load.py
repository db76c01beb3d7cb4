"""Bounded load on a running dim-serve: a fixed number of requests from C concurrent clients,
each request a row query (GET /api/search/row/N, 80 %) or an image upload (POST
/api/search/image with a PNG body, 20 %), drawn by a seeded generator so every run asks the same
requests. Stops early when the time limit passes. Prints one JSON object: requests answered,
requests/s, p50 and p99 latency in ms per kind and overall, and every status code counted (a
connection error counts as status 0).

    load.py --url http://127.0.0.1:PORT --rows N --images a.png b.png ... --clients 8 --requests 2000
"""

import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def plan(requests, rows, images, seed):
    draw = random.Random(seed)
    return [
        ("upload", draw.randrange(len(images))) if draw.random() < 0.2 else ("row", draw.randrange(rows))
        for _ in range(requests)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    address = urllib.parse.urlparse(args.url)
    bodies = [open(path, "rb").read() for path in args.images]
    work = plan(args.requests, args.rows, bodies, args.seed)
    next_item = iter(range(len(work)))
    lock = threading.Lock()
    latencies = {"row": [], "upload": []}
    statuses = {}
    deadline = time.monotonic() + args.seconds

    def client():
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                index = next(next_item, None)
            if index is None:
                break
            kind, which = work[index]
            started = time.monotonic()
            try:
                if kind == "row":
                    connection.request("GET", f"/api/search/row/{which}?k=10")
                else:
                    connection.request(
                        "POST", "/api/search/image?k=10", body=bodies[which], headers={"Content-Type": "image/png"}
                    )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
                connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
            elapsed_ms = (time.monotonic() - started) * 1e3
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies[kind].append(elapsed_ms)
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    answered = sum(statuses.values())
    everything = latencies["row"] + latencies["upload"]
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests_planned": args.requests,
                "requests_sent": answered,
                "seconds": seconds,
                "requests_per_second": answered / seconds,
                "ok_per_second": len(everything) / seconds,
                "p50_ms": percentile(everything, 0.50),
                "p99_ms": percentile(everything, 0.99),
                "row_p50_ms": percentile(latencies["row"], 0.50),
                "row_p99_ms": percentile(latencies["row"], 0.99),
                "upload_p50_ms": percentile(latencies["upload"], 0.50),
                "upload_p99_ms": percentile(latencies["upload"], 0.99),
                "statuses": {str(code): count for code, count in sorted(statuses.items())},
            }
        )
    )


if __name__ == "__main__":
    main()
