"""Named locks on the shared database: one holder at a time, and a holder that dies (SIGKILL) leaves no lock
behind; on a sqlite file (flock) and on the real PostgreSQL (advisory lock) from $DEPTUNE_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from deptune import locks

POSTGRES_ENV = "DEPTUNE_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def lock_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it to the PostgreSQL server on 127.0.0.1:5432)")
    return url


def test_one_holder_at_a_time_and_released_after(lock_url):
    key = f"sweep:{uuid.uuid4().hex}"
    with locks.exclusive(key, lock_url):
        with pytest.raises(locks.LockHeld, match=key):
            with locks.exclusive(key, lock_url, wait_s=0.5):
                pass
        with locks.exclusive(f"{key}-other", lock_url):  # other keys are independent
            pass
    with locks.exclusive(key, lock_url):  # released at the end of the block
        pass


def test_a_killed_holder_leaves_no_lock(lock_url):
    key = f"sweep:{uuid.uuid4().hex}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from deptune import locks\n"
            "with locks.exclusive(sys.argv[1], sys.argv[2]):\n"
            "    print('held', flush=True); time.sleep(600)",
            key,
            lock_url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockHeld):
            with locks.exclusive(key, lock_url):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with locks.exclusive(key, lock_url, wait_s=10):  # the server (or kernel) dropped it with the process
        pass
    assert time.monotonic() - started < 10
