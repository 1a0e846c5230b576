"""Test support: the live cluster's environment (set by isorun-run-with-cluster) and isorunctl."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import isorun  # noqa: E402


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run this suite under isorun-run-with-cluster (ctest -L sdk)")
    return value


def exec_unavailable() -> str:
    """Why exec cannot run here ('' when it can): simulated runners run no processes."""
    if os.environ.get("ISORUN_TEST_DRIVER") == "runc":
        return ""
    return "needs real sandboxes; the cluster runs simulated runners: " + os.environ.get(
        "ISORUN_TEST_SIM_REASON", "unknown reason")


def ctl(*args: str) -> str:
    """Runs isorunctl against the cluster's database; returns its stdout."""
    return subprocess.run(
        [os.path.join(env("ISORUN_BIN_DIR"), "isorunctl"), *args],
        env={**os.environ, "ISORUN_DATABASE_URL": env("ISORUN_DATABASE_URL")},
        check=True, capture_output=True, text=True,
    ).stdout


def new_tenant(prefix: str, flags: Tuple[str, ...] = (), region: str = "local") -> Tuple[str, str]:
    """A new tenant and a key of ``region`` for it: (name, key)."""
    name = f"{prefix}-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
    ctl("tenants", "create", name, *flags)
    return name, ctl("keys", "create", name, "--region", region).strip()


def client(**options) -> isorun.Isorun:
    return isorun.Isorun(api_key=env("ISORUN_API_KEY"), api_url=env("ISORUN_API_URL"), **options)


def eventually(fn: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.1)
    return fn()


class Made:
    """Sandboxes a test made, destroyed after it."""

    def __init__(self) -> None:
        self.sandboxes: List[isorun.Sandbox] = []

    def add(self, sandbox: isorun.Sandbox) -> isorun.Sandbox:
        self.sandboxes.append(sandbox)
        return sandbox

    def destroy_all(self) -> None:
        for sandbox in self.sandboxes:
            try:
                sandbox.destroy()
            except isorun.IsorunError:
                pass
        self.sandboxes.clear()
