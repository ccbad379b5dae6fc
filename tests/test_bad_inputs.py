"""A fast subset of ``benchmarks/bad_inputs.py``: bad flag values for every subcommand, bad files
for ``difflab sample``, and runs of another network or version for ``difflab.load``; each must be
a one-line error with the expected exit status, no traceback, and leave every run folder as it
was."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bad_inputs  # noqa: E402


def test_quick_bad_inputs_are_one_line_errors_that_change_nothing(tmp_path):
    f = bad_inputs.build_fixtures(tmp_path / "fixtures")
    cases = bad_inputs.flag_cases(f) + bad_inputs.path_cases(f) + bad_inputs.api_cases(f)
    chosen = bad_inputs.select(cases, quick=True, only=None)
    commands = {c.command for c in chosen}
    assert set(bad_inputs.leaf_parsers()) <= commands  # every subcommand is tried
    assert any(c.api for c in chosen) and any(c.expect == bad_inputs.RUNTIME for c in chosen)
    (tmp_path / "work").mkdir()
    results = bad_inputs.run_cases(chosen, f, tmp_path / "work")
    failures = [f"{r.case.command}: {r.case.what}: {'; '.join(r.problems())} ({r.line[:120]})"
                for r in results if r.problems()]
    assert failures == []
