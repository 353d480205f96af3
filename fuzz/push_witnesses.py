#!/usr/bin/env python3
"""Pushes every memory-safety and bricking witness of fuzz/regressions over
HTTP to a running seqsync server, the way an attacker holding a write token
would: whole, and split in two pushes in either order, declaring the current
schema version (which lets an update write under the reserved migration
client ids the witnesses use). Prints each answer, then reads the documents
back. Run the server under valgrind to see that nothing reads freed memory:

    SEQSYNC_STORAGE_PATH=/tmp/w SEQSYNC_SERVER_LISTEN=127.0.0.1:18799 \
        valgrind target/release/examples/server &
    python3 fuzz/push_witnesses.py http://127.0.0.1:18799
"""
import pathlib
import sys
import urllib.error
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18799"
REGRESSIONS = pathlib.Path(__file__).parent / "regressions" / "push_bytes"


def push(doc, update):
    request = urllib.request.Request(
        f"{BASE}/v1/collections/witnesses/documents/{doc}/updates",
        data=bytes(update),
        method="POST",
        headers={"x-schema-version": "1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read()[:100]
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:100]


def read(doc):
    try:
        with urllib.request.urlopen(
            f"{BASE}/v1/collections/witnesses/documents/{doc}", timeout=120
        ) as answer:
            return answer.status, len(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:100]


# F3 as two pushes (fuzz/README.md), in both orders and as one.
F3_A = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 255, 109, 31, 123, 0]
F3_B = [1, 3, 1, 0, 4, 1, 1, 116, 3, 48, 32, 40, 1, 1, 0, 0, 1, 109, 1, 0, 0, 0]
cases = {
    "f3-a-then-b": [F3_A, F3_B],
    "f3-b-then-a": [F3_B, F3_A],
    "f3-as-one": [F3_A + F3_B],
}
for path in sorted(REGRESSIONS.iterdir()):
    data = list(path.read_bytes())
    half = len(data) // 2
    cases[f"{path.name}-whole-twice"] = [data, data]
    cases[f"{path.name}-second-half-first"] = [data[half:], data[:half]]
    cases[f"{path.name}-first-half-first"] = [data[:half], data[half:]]

for doc, pushes in cases.items():
    answers = [push(doc, update) for update in pushes]
    print(doc, [status for status, _ in answers], "read:", read(doc)[0])
    for status, body in answers:
        if status != 200:
            print("   ", status, body.decode(errors="replace"))
