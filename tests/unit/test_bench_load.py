"""The benchmarks' load generators (bench/load.py): the Python one, used where wrk is not
installed, takes the same arguments as wrk's and measures what it read."""

import pytest

from bench.load import python_rate, rates
from tests.support.page_server import serving

BODY = b"x" * 1000


def test_the_python_load_generator_runs_as_the_five_figures_call_it(tmp_path):
    seen = []
    with serving(BODY, seen=seen) as base:
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
    sent = {headers.get("X-Bench") for headers in seen}
    assert sent == {None, "yes"}
