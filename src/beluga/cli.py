"""What every stage script shares: expected failures become one line and an exit code."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable

from . import timing
from .errors import BelugaError, Interrupted

LAUNCHER_PID = "BELUGA_LAUNCHER_PID"  # set in the ranks that `distributed.launch` starts


def stage(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`, turning a BelugaError into one line on stderr and its exit code.

    Under data parallelism every rank fails alike; each machine's first rank alone prints.
    A stage that succeeds prints where its wall time went (`beluga.timing`), the ranks'
    launcher for them.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        start_up = timing.since_process_start()
        begin = time.perf_counter()
        try:
            main()
        except BelugaError as error:
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                label = "interrupted" if isinstance(error, Interrupted) else "error"
                print(f"{label}: {' '.join(str(error).split())}", file=sys.stderr)
            sys.exit(error.exit_code)
        except Exception as error:
            if LAUNCHER_PID not in os.environ:
                raise
            # A rank's unexpected error goes to the launcher (torch elastic's error file),
            # which prints it, unless another rank's death is what caused it.
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(error)
            sys.exit(1)
        if LAUNCHER_PID not in os.environ:
            print(timing.summary(start_up, time.perf_counter() - begin))

    return wrapper
