"""Shared fixtures, and strict skips for CI.

With ``DIFFLAB_STRICT_SKIPS=1`` (``make test`` sets it, and CI runs ``make test``) a skipped test,
or a test module skipped at import, is reported as a failure naming its skip reason, unless that
reason is on :data:`ALLOWED_SKIPS`. So a missing dev extra, a data set that is not installed or a
fixture that skips by mistake cannot turn into a silently green run. xfail outcomes are left alone.

Every allow-list entry is a reason prefix plus a condition CI can check for itself: the skip is
accepted only when the condition holds on the machine running the tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest

pytest_plugins = ["pytester"]

STRICT_ENV = "DIFFLAB_STRICT_SKIPS"


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def _no_chromium() -> bool:
    return not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver"))


@dataclass(frozen=True)
class AllowedSkip:
    """Skips whose reason starts with ``prefix`` are accepted where ``holds()`` is true."""

    prefix: str
    condition: str
    holds: Callable[[], bool]


ALLOWED_SKIPS: tuple[AllowedSkip, ...] = (
    AllowedSkip("needs CUDA", "torch.cuda.is_available() is False", _no_cuda),
    # tests/test_browser.py: .ci/run installs chromium, so CI never takes this skip
    AllowedSkip("needs chromium", "/usr/bin/chromium or /usr/bin/chromedriver is absent", _no_chromium),
)


def strict_skips() -> bool:
    return os.environ.get(STRICT_ENV, "") == "1"


def skip_reason(longrepr: object) -> str:
    """The reason of a skipped report: its longrepr is (path, lineno, "Skipped: reason")."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def allowed(reason: str) -> bool:
    return any(reason.startswith(a.prefix) and a.holds() for a in ALLOWED_SKIPS)


def refusal(reason: str) -> str:
    accepted = "; ".join(f"{a.prefix!r} when {a.condition}" for a in ALLOWED_SKIPS)
    return (f"skipped ({reason!r}) under {STRICT_ENV}=1: a skip is a failure here unless its reason "
            f"is on the allow-list of tests/conftest.py ({accepted})")


def _fail_if_refused(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and strict_skips()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report.longrepr)
    if not allowed(reason):
        report.outcome = "failed"
        report.longrepr = refusal(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    _fail_if_refused(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    _fail_if_refused(report)
    return report


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def diffusers() -> ModuleType:
    """The diffusers package, for the tests that compare against it (a dev extra)."""
    return pytest.importorskip("diffusers")
