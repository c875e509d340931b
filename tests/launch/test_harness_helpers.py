"""The in-process runner the launch tests use must give what a process would: the exit
status and the message of a tool that exits through SystemExit."""

from __future__ import annotations

import sys

import pytest

from tests.launch.harness_helpers import run_tool_in_process


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [("ERROR: no such experiment", 1, "ERROR: no such experiment\n"), (2, 2, ""), (None, 0, "")],
)
def test_a_tools_system_exit_becomes_its_exit_status(code, status, stderr, capsys, monkeypatch):
    def main(argv: list[str]) -> int:
        print("started", argv)
        raise SystemExit(code)

    p = run_tool_in_process(main, ["--x=1"], capsys, monkeypatch)
    assert (p.returncode, p.stdout, p.stderr) == (status, "started ['--x=1']\n", stderr)
    assert p.args == ["launch", "--x=1"]


def test_a_tools_return_value_and_stderr_pass_through(capsys, monkeypatch):
    def main(argv: list[str]) -> int:
        print("bad binding", file=sys.stderr)
        return 2

    p = run_tool_in_process(main, [], capsys, monkeypatch)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", "bad binding\n")
