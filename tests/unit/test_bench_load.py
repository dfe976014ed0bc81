"""The benchmarks' load generators (bench/load.py): the Python one, used where wrk is not
installed, takes the same arguments as wrk's and measures what it read."""

import http.server
import threading

import pytest

from bench.load import python_rate, rates

BODY = b"x" * 1000


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def server():
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generators use it

        def do_GET(self):
            seen.append(self.headers.get("X-Bench"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    httpd = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_the_python_load_generator_runs_as_the_five_figures_call_it(server, tmp_path):
    base, seen = server
    # As bench/figures.py calls rates(): targets with and without headers, and wrk's folder.
    got = rates(
        python_rate,
        {"plain": (base, ["/a", "/b"]), "with a header": (base, ["/a"], {"X-Bench": "yes"})},
        rounds=1,
        seconds=0.5,
        connections=2,
        lua_dir=tmp_path,
    )
    for rate, volume in got.values():
        assert rate > 0
        assert volume == pytest.approx(rate * len(BODY))
    assert None in seen and "yes" in seen
