"""Progress within a fact during attribution: where a long fact is, and about how long it has
left.

The per-fact bar of ``attribute`` moves once per fact, which on a big model on a loaded machine
can be many minutes. :class:`FactProgress` watches the rows of the fact being scored through the
engine's progress callback (:func:`kn_lens.attribution.engine.reporting_progress`, called once per
chunk of gradient rows): a second bar (rows, rate, time left) when bars are shown, and a log line
at most every ``every`` seconds in any case, so a log file shows it too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

from kn_lens.attribution.engine import reporting_progress
from kn_lens.data.facts import FactBag

log = logging.getLogger("kn_lens.pipeline")


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"1.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class FactProgress:
    """Progress within each fact (see the module docstring).

    Args:
        bar: show a bar of rows under the per-fact bar.
        every: seconds between log lines (INFO) while one fact runs.
    """

    def __init__(self, bar: bool, every: float = 60.0) -> None:
        self.bar, self.every = bar, every

    @contextlib.contextmanager
    def watch(self, bag: FactBag) -> Iterator[None]:
        """Report the rows of ``bag``'s attribution while the block runs."""
        t0 = last = time.perf_counter()
        with tqdm(
            total=None,
            unit="row",
            desc=f"  {bag.key}",
            leave=False,
            position=1,
            dynamic_ncols=True,
            disable=not self.bar,
            file=sys.stderr,
        ) as pbar:

            def on_rows(done: int, total: int) -> None:
                nonlocal last
                if pbar.total != total:
                    pbar.reset(total=total)
                pbar.update(done - pbar.n)
                now = time.perf_counter()
                if now - last >= self.every and 0 < done < total:
                    last = now
                    spent = now - t0
                    log.info(
                        "attribute %s: %d of %d rows (%.0f%%) in %s, about %s left",
                        bag.key,
                        done,
                        total,
                        100.0 * done / total,
                        duration(spent),
                        duration(spent / done * (total - done)),
                    )

            with reporting_progress(on_rows):
                yield
