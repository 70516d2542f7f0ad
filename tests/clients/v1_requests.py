"""KServe V1 predict through the gateway with the real `requests` library, which sends
`Accept-Encoding: gzip, deflate` (and more) by default, as python users do.

Usage: v1_requests.py HOST:PORT MODEL

Prints one JSON line: for each of (requests' default headers, an explicit
`Accept-Encoding: gzip`, a body V1 cannot translate) the status, the response's
`Content-Encoding` (null when none) and the decoded JSON body.
"""

import json
import sys

import requests


def call(url, body, headers=None):
    r = requests.post(url, json=body, headers=headers, timeout=60)
    try:
        decoded = r.json()
    except ValueError:
        decoded = {"undecodable": r.text[:200]}
    return {"status": r.status_code, "encoding": r.headers.get("content-encoding"), "json": decoded}


def main() -> int:
    host, model = sys.argv[1], sys.argv[2]
    url = f"http://{host}/v1/models/{model}:predict"
    instances = {"instances": [[1, 2, 3, 4], [0, 0, 0, 0]]}
    print(json.dumps({
        "default": call(url, instances),
        "gzip": call(url, instances, {"Accept-Encoding": "gzip"}),
        "bad": call(url, {"instances": [[1, 2]]}, {"Accept-Encoding": "gzip"}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
