"""A run's folder: one owner, only its own files touched.

A run writes into a folder it owns. A new run takes a folder that does not
exist yet or is empty (the default is a fresh ``runs/DATA-TIME`` with a
numbered suffix where that name is taken, created atomically with
``mkdir``, so two runs started in the same second get two folders); a
resumed run takes the folder of the run it continues. Either way the run
first takes an exclusive lock (``fcntl.flock`` on ``.jbp.lock`` in the
folder), held until the process ends and released by the kernel even when it
is killed; a second process that asks for the same folder is refused, naming
the process that holds it.

Inside the folder the run writes only the files in :data:`FILES` (each
atomically, through :func:`jbp.files.atomic_write`) and the lock, and the
only files it ever deletes are the temporary files that its own interrupted
writes left, recognised by their exact form (``.NAME.jbp-XXXXXXXX.tmp`` for
a name in :data:`FILES`).
"""

import datetime
import errno
import fcntl
import os
import pathlib

from jbp.files import temporary_files

FILES = ("config.json", "metrics.jsonl", "checkpoint.ckpt", "params.npz", "summary.json", "plot.png", "preprocessing.json")
"""The files a run writes in its folder."""

LOCK = ".jbp.lock"


class RunFolderError(ValueError):
    """A folder that a run cannot own: not a folder, not empty, in use, or not a run."""


class RunFolder:
    """A run's folder, locked for this process (see the module docstring).

    Use :meth:`new` or :meth:`existing` (as a context manager); the lock lasts
    until :meth:`release`, the end of the ``with`` block or of the process.
    """

    def __init__(self, path: pathlib.Path, lock_fd: int):
        self.path, self._lock_fd = path, lock_fd

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def new(cls, out: "str | os.PathLike | None", stem: str, parent: "str | os.PathLike" = "runs") -> "RunFolder":
        """Claims a folder for a new run.

        Args:
          out: the folder asked for, or ``None`` for ``PARENT/STEM-YYYYmmdd-HHMMSS``
            (with ``-2``, ``-3``, … when that is taken).
          stem: the default folder's first part (the data set's name).
          parent: where default folders go.

        Raises:
          RunFolderError: ``out`` is a file, is not empty (a run there is
            named as such, with how to continue it), or is in use.
          OSError: the folder cannot be created.
        """
        if out is None:
            return cls._lock(_fresh_folder(pathlib.Path(parent), stem), created=True)
        path = pathlib.Path(out)
        created = False
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
                created = True
            except FileExistsError:
                pass  # another process made it just now: the checks below decide
        _check_is_folder(path)
        _check_empty(path)
        folder = cls._lock(path, created)
        try:
            _check_empty(path)  # again, now that no other run can start writing here
        except RunFolderError:
            folder.release()
            raise
        return folder

    @classmethod
    def existing(cls, path: "str | os.PathLike") -> "RunFolder":
        """Claims the folder of a run to continue it.

        Raises:
          RunFolderError: the path is not a folder, holds no checkpoint, or is in use.
          FileNotFoundError: nothing is there.
        """
        path = pathlib.Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no run at {path}")
        _check_is_folder(path)
        if not (path / "checkpoint.ckpt").is_file():
            raise RunFolderError(f"{path} holds no checkpoint.ckpt: it is not a run that can be continued")
        return cls._lock(path, created=False)

    @classmethod
    def _lock(cls, path: pathlib.Path, created: bool) -> "RunFolder":
        lock = path / LOCK
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):
            raise RunFolderError(f"{lock} is not a lock file jbp wrote; remove it or choose another folder")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"{path} is in use by another jbp run (process {holder}); wait for it to end or choose another folder"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def clean_temporaries(self) -> list[pathlib.Path]:
        """Removes what this run's interrupted writes left (and nothing else); returns what was removed."""
        removed = temporary_files(self.path, FILES)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def release(self) -> None:
        """Lets another process take the folder (the lock file itself stays)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _check_is_folder(path: pathlib.Path) -> None:
    if not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder; choose a folder for the run")


def _check_empty(path: pathlib.Path) -> None:
    """Refuses a folder that holds anything but a lock file: a run writes only where nothing can be lost."""
    found = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if "checkpoint.ckpt" in found:
        raise RunFolderError(f"{path} already holds a run: continue it with --resume {path}, or choose another --out")
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunFolderError(
            f"{path} is not empty (it holds {shown}); a new run writes only into a new or empty folder, "
            "so that nothing there is overwritten"
        )


def _fresh_folder(parent: pathlib.Path, stem: str) -> pathlib.Path:
    """``PARENT/STEM-TIME``, or ``-2``, ``-3``, … after it: created here, so no other process has it."""
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunFolderError(f"{parent}: no free folder name after {base}-9999")
