"""A racer for the statistical create test: ``python race_worker.py URL WRITER COUNT``.

Prints ``ready``, waits for a line on stdin (the start signal, so that all racers start
together), then creates ``race/<i>.msgpack`` for i in 0..COUNT-1, each with its own record
(a fresh random nonce), and prints one JSON line: the indexes it won and the nonce of each.
"""

from __future__ import annotations

import json
import sys

from ablator import records
from ablator.store import open_store


def main(url: str, writer: str, count: int) -> int:
    store = open_store(url)
    store.list("race")  # connect before the start signal (S3: client and bucket check)
    print("ready", flush=True)
    sys.stdin.readline()
    won: list[int] = []
    nonces: dict[int, str] = {}
    for i in range(count):
        probe = records.SelfTestProbe(writer=writer)
        nonces[i] = probe.nonce
        if store.create(f"race/{i:06d}.msgpack", records.encode(probe)):
            won.append(i)
    print(json.dumps({"writer": writer, "won": won, "nonces": nonces}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
