"""What every stage script and command-line tool shares: expected failures become one line and
an exit code; a stage also says where its wall time went."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from . import timing
from .errors import BelugaError, Interrupted

LAUNCHER_PID = "BELUGA_LAUNCHER_PID"  # set in the ranks that `distributed.launch` starts


def command(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`, turning a BelugaError into one line on stderr and its exit code.

    Under data parallelism every rank fails alike; each machine's first rank alone prints.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        rank = LAUNCHER_PID in os.environ  # read first: `distributed.launch` sets it for its ranks
        try:
            main()
        except BelugaError as error:
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                label = "interrupted" if isinstance(error, Interrupted) else "error"
                print(f"{label}: {' '.join(str(error).split())}", file=sys.stderr)
            sys.exit(error.exit_code)
        except Exception as error:
            if not rank:
                raise
            # A rank's unexpected error goes to the launcher (torch elastic's error file),
            # which prints it, unless another rank's death is what caused it.
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(error)
            sys.exit(1)

    return wrapper


def stage(main: Callable[[], None]) -> Callable[[], None]:
    """A pipeline stage's `command`: when it succeeds it also prints where its wall time
    went (`beluga.timing`); under data parallelism each machine's launcher prints it, for
    the whole of its ranks' run."""
    run = command(main)

    @functools.wraps(main)
    def wrapper() -> None:
        rank = LAUNCHER_PID in os.environ
        begun = timing.begin()
        run()
        if not rank:
            print(timing.summary(begun))

    return wrapper
