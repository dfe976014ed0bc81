"""Calls to ComfyUI on http.client (api/comfyui_http.py), against a real HTTP server on this
machine: what is sent, kept-alive connections and their replacement, timeouts and failures."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api import comfyui
from api import exceptions as exc


class Server:
    """A local HTTP/1.1 server that records each request and each connection."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.connections = 0
        self.close_after_answer = False  # drop a kept-alive connection, as an idle timeout does
        self.release = threading.Event()  # a /slow call waits for it
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                outer.connections += 1

            def do_GET(self):
                self._answer()

            def do_POST(self):
                self._answer()

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                if self.path == "/slow":
                    outer.release.wait(10)
                if self.path == "/drop":
                    self.close_connection = True
                    return  # closed without an answer
                status, answer = (500, b"broken") if self.path == "/broken" else (200, b'{"ok":1}')
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                if outer.close_after_answer:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True

            def shutdown_request(self, request):
                super().shutdown_request(request)
                outer.closed.set()

            def handle_error(self, request, client_address):
                # A client gone before its answer (an app process that ended while one of its
                # background calls was answered) is not this server's error.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.closed = threading.Event()  # set as the server closes a connection
        self.httpd = Httpd(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.stop()


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setattr(comfyui, "PLAIN_HTTP", True)  # the unit tests' default is requests
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    made = comfyui.ComfyUIClient(server.url, (2.0, 5.0))
    assert made._plain is not None
    yield made
    made.close()


def test_calls_carry_the_sidecars_name_their_json_and_their_query(client, server):
    answer = client._request("POST", client._url("/prompt"), body={"prompt": {"1": {}}})
    assert answer.status_code == 200 and answer.json() == {"ok": 1}
    client.recent_history(64)
    post, get = server.requests
    assert post["method"] == "POST" and post["path"] == "/prompt"
    assert post["headers"]["User-Agent"] == get["headers"]["User-Agent"] == "comfy-sidecar"
    assert post["headers"]["Content-Type"] == "application/json"
    assert json.loads(post["body"]) == {"prompt": {"1": {}}}
    assert get["path"] == "/history?max_items=64" and get["body"] == b""


def test_one_connection_carries_a_threads_calls(client, server):
    for _ in range(5):
        client.system_stats()
    assert len(server.requests) == 5 and server.connections == 1


def test_a_call_whose_connection_breaks_after_it_was_sent_is_not_sent_again(client, server):
    # A retried POST /prompt could run the work twice: the failure is the caller's.
    with pytest.raises(exc.ComfyUIUnreachable):
        client._request("POST", client._url("/drop"), body={"prompt": {}})
    assert [r["path"] for r in server.requests] == ["/drop"]


def test_a_connection_the_server_closed_is_replaced(client, server):
    server.close_after_answer = True
    for _ in range(3):
        client.system_stats()
        assert server.closed.wait(10)  # closed while the client's connection is idle
        server.closed.clear()
    assert len(server.requests) == 3 and server.connections == 3


def test_an_answer_that_does_not_come_in_time_is_a_timeout(server, monkeypatch):
    monkeypatch.setattr(comfyui, "PLAIN_HTTP", True)
    slow = comfyui.ComfyUIClient(server.url, (2.0, 0.2))
    with pytest.raises(exc.ComfyUITimeout, match=r"no answer within 0\.2s"):
        slow._get("/slow")
    server.release.set()
    assert slow.system_stats() == {"ok": 1}  # a fresh connection for the next call
    assert [r["path"] for r in server.requests] == ["/slow", "/system_stats"]


def test_nothing_listening_is_unreachable(server, monkeypatch):
    monkeypatch.setattr(comfyui, "PLAIN_HTTP", True)
    url = server.url
    server.stop()
    with pytest.raises(exc.ComfyUIUnreachable, match="cannot connect"):
        comfyui.ComfyUIClient(url, (2.0, 5.0)).system_stats()


def test_an_error_status_is_a_server_error_naming_the_call(client):
    with pytest.raises(exc.ComfyUIServerError, match=r"GET .*/broken answered 500") as raised:
        client._get("/broken")
    assert (raised.value.status, raised.value.body) == (500, "broken")


def test_a_proxy_for_comfyuis_url_keeps_requests(server, monkeypatch):
    monkeypatch.setattr(comfyui, "PLAIN_HTTP", True)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert comfyui.ComfyUIClient(server.url, (2.0, 5.0))._plain is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert comfyui.ComfyUIClient(server.url, (2.0, 5.0))._plain is not None
    assert comfyui.ComfyUIClient("https://comfy.test", (2.0, 5.0))._plain is None


def test_a_worker_calling_comfyui_without_a_proxy_never_loads_requests(server, tmp_path):
    """requests costs each worker ~3.6 MB: the app and its calls on http.client do without it
    (a fresh interpreter: this one has it loaded by the unit tests' fake ComfyUI)."""
    script = """
import sys
from api import create_app
from api.sidecar import current
app = create_app()
with app.app_context():
    assert current().client._plain is not None
    current().client.recent_history(1)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("requests", "charset_normalizer"))
assert not loaded, loaded
"""
    proxies = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy")
    env = {k: v for k, v in os.environ.items() if k not in proxies}
    host, port = server.url.removeprefix("http://").split(":")
    env.update(
        WORKSPACE_PATH=str(tmp_path),
        COMFYUI_HOST=host,
        COMFYUI_PORT=port,
        TRACKER_ENABLED="false",
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The app's own calls at its start and this one: all answered on http.client.
    assert any(r["path"].startswith("/history") for r in server.requests)
