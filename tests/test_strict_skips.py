"""tests/conftest.py's strict skips, on tiny test files run by pytester with that same conftest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # imported here, not first inside pytester's in-process runs (torch cannot reload)

from tests.conftest import STRICT_ENV

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

TESTS = """
import pytest

def test_passes():
    pass

def test_skips_in_the_body():
    pytest.skip("data set not installed")

@pytest.fixture
def missing():
    pytest.importorskip("no_such_module_difflab")

def test_skips_in_a_fixture(missing):
    pass

@pytest.mark.skip(reason="not today")
def test_skip_marker():
    pass

def test_needs_cuda():
    pytest.skip("needs CUDA for the fused kernel")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, strict: bool, cuda: bool = False,
        source: str = TESTS) -> pytest.RunResult:
    monkeypatch.setenv(STRICT_ENV, "1" if strict else "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tiny=source)
    return pytester.runpytest_inprocess("-rA", "-p", "no:cacheprovider")


def message(result: pytest.RunResult, test: str) -> str:
    """The line under a test's "____ test ____" header in the failures/errors sections."""
    lines = result.outlines
    return next(lines[i + 1] for i, line in enumerate(lines) if line.startswith("_") and f" {test} " in line)


def test_without_the_variable_skips_stay_skips(pytester, monkeypatch):
    result = run(pytester, monkeypatch, strict=False)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)


def test_strict_skips_fail_with_their_reason_except_the_allowed_one(pytester, monkeypatch):
    result = run(pytester, monkeypatch, strict=True)
    # a skip in setup (fixture, marker) becomes an error, one in the test body a failure
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    for test, reason in [("test_skips_in_the_body", "data set not installed"),
                         ("test_skips_in_a_fixture", "could not import 'no_such_module_difflab'"),
                         ("test_skip_marker", "not today")]:
        assert reason in message(result, test) and f"{STRICT_ENV}=1" in message(result, test), out
    assert "SKIPPED [1] test_tiny.py" in out and "needs CUDA for the fused kernel" in out


def test_the_cuda_entry_needs_a_machine_without_cuda(pytester, monkeypatch):
    result = run(pytester, monkeypatch, strict=True, cuda=True)
    result.assert_outcomes(passed=1, failed=2, errors=2, xfailed=1)
    assert message(result, "test_needs_cuda").startswith("skipped ('needs CUDA for the fused kernel')")


def test_a_module_skipped_at_import_fails_collection(pytester, monkeypatch):
    source = 'import pytest\nnp = pytest.importorskip("no_such_module_difflab")\n\ndef test_a():\n    pass\n'
    assert run(pytester, monkeypatch, strict=False, source=source).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result = run(pytester, monkeypatch, strict=True, source=source)
    result.assert_outcomes(errors=1)
    assert "could not import 'no_such_module_difflab'" in result.stdout.str()
