"""A report directory that is either complete or absent: staged, then moved into place.

``pyro-dgm compare --out D`` writes every file of the report into a hidden staging
directory beside ``D`` (``.D.partial-*``). Only when the report is complete does
:meth:`ReportDir.commit` move it into place: a previous report at ``D`` is renamed aside,
the staged one renamed to ``D``, and the old one deleted. An interrupted run (Ctrl-C, an
error) removes its staging directory and leaves ``D`` as it was, so a directory named ``D``
always holds one whole report whose ``index.md`` and ``.nc`` files belong to the same run
(the run id in :data:`MARKER`, ``index.md`` and every NetCDF file's attributes says which).
The two renames of a commit run with Ctrl-C held back (in the main thread): once the commit
has begun the interrupt is too late to stop anything, and it is dropped, so ``D`` is never
left renamed aside.

``D`` may be a previous report (it holds :data:`MARKER`), which is replaced, or missing or
empty; anything else is refused unless ``overwrite=True``, so a typo in ``--out`` cannot
delete a directory of other files.

Example::

    >>> with ReportDir("report") as staging:
    ...     (staging.path / "index.md").write_text("# report")
    ...     staging.commit({"model": "fa"})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["MARKER", "ReportDir"]

#: file that marks a directory as a complete ``pyro-dgm compare`` report (JSON: run id, ...)
MARKER = ".pyro-dgm-report.json"


class ReportDir:
    """Stage a report beside ``out`` and move it into place when complete.

    :param out: the report directory.
    :param overwrite: replace ``out`` even if it is a non-empty directory that is not a
        previous report.
    :param on_commit: called (no arguments) once the report is in place, before Ctrl-C is
        let through again: a command line uses it to stop treating Ctrl-C as "keep the
        previous report" (``pyro-dgm compare`` then exits 0).
    :raises ValueError: ``out`` is a file, a non-empty directory that is not a report
        (without ``overwrite``), or its parent is not writable.
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False,
                 on_commit: Callable[[], None] | None = None):
        self.out = Path(out)
        self.on_commit = on_commit
        self.run_id = uuid.uuid4().hex[:12]
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out: {str(self.out)!r} is a file, not a directory")
        if (self.out.is_dir() and any(self.out.iterdir())
                and not (self.out / MARKER).is_file() and not overwrite):
            raise ValueError(f"out: {str(self.out)!r} is not empty and holds no pyro-dgm "
                             "report; choose another directory or pass --overwrite")
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-",
                                              dir=parent))
        except OSError as e:
            raise ValueError(f"out: cannot write to {str(self.out)!r} "
                             f"({e.strerror or e})") from None
        self.committed = False

    def final(self, path: Path) -> Path:
        """Where a staged ``path`` lives once the report is committed."""
        return self.out / Path(path).relative_to(self.path)

    def commit(self, info: dict | None = None) -> Path:
        """Write :data:`MARKER` (``info`` plus the run id) and move the report to ``out``."""
        marker = {"run_id": self.run_id, **(info or {})}
        (self.path / MARKER).write_text(json.dumps(marker, indent=1, default=str))
        old = None
        with _sigint_held_back():
            if self.out.exists():
                old = self.out.with_name(f".{self.out.name}.old-{self.run_id}")
                os.replace(self.out, old)
            os.replace(self.path, self.out)
            self.committed = True
            if self.on_commit is not None:
                self.on_commit()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the staging directory (``out`` is untouched)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> ReportDir:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@contextlib.contextmanager
def _sigint_held_back() -> Iterator[None]:
    """Drop SIGINT for the duration (main thread only; elsewhere signals cannot arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
