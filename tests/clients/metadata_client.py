"""Metadata and readiness through the gateway, the ways KServe clients ask, for the
integration tests: python-requests (V2 and V1 paths and the V2 config, with status and the
gateway's x-mm-model-state header), NVIDIA tritonclient.http and tritonclient.grpc (metadata,
readiness and config, with and without the model in an mm-model-id header).

Usage: metadata_client.py HOST:PORT MODEL

Prints one JSON line; every call that fails records {"error": "...", "status": "..."}.
"""

import json
import sys

import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def call(fn):
    try:
        return fn()
    except InferenceServerException as e:
        return {"error": e.message(), "status": str(e.status())}


def plain(url, path):
    r = requests.get(f"http://{url}{path}", timeout=60)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return {"status": r.status_code, "state": r.headers.get("x-mm-model-state"), "body": body}


def main() -> int:
    url, model = sys.argv[1], sys.argv[2]
    out = {
        "requests": {
            "metadata": plain(url, f"/v2/models/{model}"),
            "version": plain(url, f"/v2/models/{model}/versions/1"),
            "ready": plain(url, f"/v2/models/{model}/ready"),
            "v1": plain(url, f"/v1/models/{model}"),
            "config": plain(url, f"/v2/models/{model}/config"),
        }
    }
    http = httpclient.InferenceServerClient(url=url, connection_timeout=60, network_timeout=60)
    try:
        out["http"] = {
            "ready": call(lambda: bool(http.is_model_ready(model))),
            "metadata": call(lambda: http.get_model_metadata(model)),
        }
    finally:
        http.close()
    grpc = grpcclient.InferenceServerClient(url=url)
    try:
        header = {"mm-model-id": model}
        out["grpc"] = {
            "ready": call(lambda: bool(grpc.is_model_ready(model, client_timeout=60))),
            "metadata": call(lambda: grpc.get_model_metadata(model, as_json=True, client_timeout=60)),
            "header_ready": call(
                lambda: bool(grpc.is_model_ready(model, headers=header, client_timeout=60))
            ),
            "header_metadata": call(
                lambda: grpc.get_model_metadata(
                    model, headers=header, as_json=True, client_timeout=60
                )
            ),
            "config": call(lambda: grpc.get_model_config(model, as_json=True, client_timeout=60)),
            "header_config": call(
                lambda: grpc.get_model_config(model, headers=header, as_json=True, client_timeout=60)
            ),
        }
    finally:
        grpc.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
