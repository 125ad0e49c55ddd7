"""Progress of the steps that take more than a few seconds (featurizing, PEs, cycle counts, epochs).

In a terminal it is a tqdm bar, drawn only once the step has run for `QUIET_SECONDS`; in a log
(stderr not a terminal: CI, `nohup`) it is a plain line at each tenth of the way, at most one per
`PLAIN_EVERY` seconds, so a short step prints nothing and a long one a handful of lines. It only
displays: nothing it does reaches a run's numbers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

QUIET_SECONDS = 2.0  # a step shorter than this shows no bar
PLAIN_EVERY = 10.0  # seconds between two plain lines of one step
LINE = 0  # the terminal line this process's bars draw on: a worker's index, so workers' bars do not overwrite


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 20 min': a time left or taken, as precise as a person needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """A bar of `total` steps (None: not known in advance): `update(n, note)` advances it and shows
    the note (say, the validation score)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it"):
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.start, self.last_line, self.lines = 0, time.perf_counter(), time.perf_counter(), 0
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, leave=False, delay=QUIET_SECONDS, dynamic_ncols=True, position=LINE)
            if sys.stderr.isatty()
            else None
        )

    def update(self, n: int = 1, note: str = "") -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line < PLAIN_EVERY or (self.total is not None and self.done >= self.total):
            return
        elapsed = now - self.start
        if self.total is None:  # how far, without a "left"
            where = f"{self.done:,} {self.unit}, {duration(elapsed)}"
        elif int(10 * self.done / max(self.total, 1)) > int(10 * before / max(self.total, 1)):  # a tenth more
            left = elapsed / self.done * (self.total - self.done)
            where = (
                f"{self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%}), {duration(elapsed)}, "
                f"about {duration(left)} left"
            )
        else:
            return
        print(f"{self.desc}: {where}{'; ' + note if note else ''}", file=sys.stderr, flush=True)
        self.last_line, self.lines = now, self.lines + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:  # a step long enough to have said how far it was also says that it ended
            print(f"{self.desc}: done in {duration(time.perf_counter() - self.start)}", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable, total: int | None, desc: str, unit: str = "it") -> Iterator:
    """`items`, one by one, with a `Progress` of `total` steps."""
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update()
