"""``python -m faults.skewed ARGS``: the taskmesh command line in a process whose wall clock
(``time.time``) is off by ``TASKMESH_TEST_CLOCK_SKEW`` seconds, as on a machine with a wrong clock."""

from __future__ import annotations

import os
import sys
import time

SKEW = float(os.environ["TASKMESH_TEST_CLOCK_SKEW"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + SKEW
time.time_ns = lambda: _time_ns() + int(SKEW * 1e9)

from taskmesh.cli import main  # noqa: E402

sys.exit(main())
