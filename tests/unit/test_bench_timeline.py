"""bench/timeline.py's reading of the stamps: each job's steps, and a slow job's every step."""

import pytest

from bench.timeline import START, print_slowest, steps


def marks_of(*jobs: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Stamps as the processes write them: each job opened by the client's start, at 10 s
    apart, its steps in seconds after it."""
    marks = []
    for n, job in enumerate(jobs):
        began = 10.0 * n
        marks.append((began, f"{START} (client)"))
        marks += [(began + at, label) for at, label in job]
    return marks


def test_a_slow_jobs_every_step_is_printed_its_rare_ones_marked(capsys):
    usual = [(0.001, "row written"), (0.004, "answer")]
    slow = [(0.001, "row written"), (0.002, "ComfyUI collects garbage"), (0.300, "answer")]
    jobs = steps(marks_of(*[usual] * 10, slow, usual))["client"]
    assert len(jobs) == 12
    assert jobs[10] == pytest.approx(
        {"row written": 1.0, "ComfyUI collects garbage": 2.0, "answer": 300.0}
    )

    print_slowest("client", jobs, 2)
    lines = capsys.readouterr().out.splitlines()
    first = lines.index("client: slowest job 1 of 12 (300.00 ms, sent 00:01:40.000000 UTC)")
    rows = [line.split() for line in lines[first + 2 : first + 5]]
    assert [row[:-2] for row in rows] == [
        ["row", "written"],
        ["*", "ComfyUI", "collects", "garbage"],
        ["answer"],
    ]
    assert [float(row[-1]) for row in rows] == [1.0, 1.0, 298.0]  # each after the row above
    # The next slowest: one of the usual jobs (which one, the floats' rounding says).
    assert any(line.startswith("client: slowest job 2 of 12 (4.00 ms, sent 00:") for line in lines)


def test_no_slowest_jobs_asked_for_prints_nothing(capsys):
    print_slowest("client", [{"answer": 4.0}], 0)
    assert capsys.readouterr().out == ""
