"""A run's folder: one owner, only its own files touched; and a run read back.

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
atomically, through :func:`jbp.files.atomic_write`, but for the line
``metrics.jsonl`` gains after every epoch) and the lock, and the only files it
ever deletes are the temporary files that its own interrupted writes left,
recognised by their exact form (``.NAME.jbp-XXXXXXXX.tmp`` for a name in
:data:`FILES`).

This module owns the format of a run's folder, both ways: the
``write_*`` methods of :class:`RunFolder` write each file
(:meth:`~RunFolder.write_config`, :meth:`~RunFolder.write_preprocessing`,
:meth:`~RunFolder.write_metrics` and :meth:`~RunFolder.append_metrics`,
:meth:`~RunFolder.write_checkpoint`, :meth:`~RunFolder.write_params`,
:meth:`~RunFolder.write_summary`), and :func:`read_config`,
:func:`load_checkpoint` and :func:`load_run` read them back. ``plot.png`` is
a picture for people, drawn and written by ``jbp train``; jbp never reads it.
"""

import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp.feedback import KINDS, by_name
from jbp.files import (FileFormatError, atomic_write, check_replaceable, parse_json, read_into, regular_file,
                       temporary_files)

FILES = ("config.json", "metrics.jsonl", "checkpoint.ckpt", "params.npz", "summary.json", "plot.png", "preprocessing.json")
"""The files a run writes in its folder."""

LOCK = ".jbp.lock"


class RunFolderError(FileFormatError):
    """A folder that a run cannot own: not a folder, not empty, in use, or not a run."""


class RunFolder:
    """A run's folder, locked for this process (see the module docstring).

    Use :meth:`new` or :meth:`existing` (as a context manager); the lock lasts
    until :meth:`release`, the end of the ``with`` block or of the process.
    The ``write_*`` methods and :meth:`append_metrics` write the run's files,
    each returning the path it wrote.

    Example:
      >>> import pathlib, tempfile
      >>> from jbp.run import RunFolder
      >>> with tempfile.TemporaryDirectory() as parent, RunFolder.new(pathlib.Path(parent) / "run", "xor") as folder:
      ...     path = folder.write_metrics([{"epoch": 1, "loss": 0.5}])
      ...     path = folder.append_metrics({"epoch": 2, "loss": 0.25})
      ...     print(path.read_text(), end="")
      ...     print(folder.write_summary({"epochs": 2, "test_loss": 0.25}).read_text(), end="")
      {"epoch": 1, "loss": 0.5}
      {"epoch": 2, "loss": 0.25}
      {
        "epochs": 2,
        "test_loss": 0.25
      }
    """

    def __init__(self, path: pathlib.Path, lock_fd: int, created: bool = False):
        self.path, self._lock_fd, self.created = path, lock_fd, created

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
        return cls(path, fd, created)

    def clean_temporaries(self) -> list[pathlib.Path]:
        """Removes what this run's interrupted writes left (and nothing else); returns what was removed."""
        removed = temporary_files(self.path, FILES)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def discard_unused(self) -> bool:
        """Undoes a run that leaves nothing worth keeping, so that no dead folder stays behind.

        When the folder holds neither ``checkpoint.ckpt`` nor ``params.npz``, and nothing but
        the regular files of :data:`FILES`, their temporaries and the lock, those files are
        removed, and the folder itself when this run created it (an empty folder given with
        ``--out`` stays, empty, ready to be used again). Anything else there, a file the run did
        not write or a run's results, leaves everything as it is. Call it while holding the
        folder, when a new run is refused or stops before its first checkpoint.

        Returns:
          Whether the run's files were removed.
        """
        if self._lock_fd is None:
            return False
        entries = list(self.path.iterdir())
        temporaries = set(temporary_files(self.path, FILES))
        ours = [p for p in entries if p in temporaries or (p.name in FILES and p.is_file() and not p.is_symlink())]
        others = [p for p in entries if p not in ours and p.name != LOCK]
        if others or any(p.name in ("checkpoint.ckpt", "params.npz") for p in ours):
            return False
        for path in ours:
            path.unlink(missing_ok=True)
        if self.created:
            (self.path / LOCK).unlink(missing_ok=True)
            self.release()
            try:
                self.path.rmdir()
            except OSError:  # something appeared meanwhile: it stays, and the folder with it
                pass
        return True

    # --- the run's files, written (each returns the path it wrote)

    def write_config(self, config: dict) -> pathlib.Path:
        """Writes ``config.json``: the configuration (:func:`check_config`'s) as JSON, indented by
        two spaces, its keys in their order, no NaN or infinity."""
        return _write_json(self.path / "config.json", config)

    def write_preprocessing(self, preprocessing: Any) -> pathlib.Path:
        """Writes ``preprocessing.json``: a :class:`~jbp.data.preprocessing.Preprocessing` as its
        own ``save`` writes it (its ``to_json``, indented by one space); :func:`read_preprocessing`
        reads it back."""
        path = self.path / "preprocessing.json"
        preprocessing.save(path)
        return path

    def write_metrics(self, history: "Iterable[dict]") -> pathlib.Path:
        """Writes ``metrics.jsonl`` anew: one line of JSON per record of ``history`` (the epochs
        the checkpoint records), no NaN or infinity."""
        path = self.path / "metrics.jsonl"
        atomic_write(path, lambda f: f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in history).encode()))
        return path

    def append_metrics(self, record: dict) -> pathlib.Path:
        """Adds one epoch's record to ``metrics.jsonl``, a line of JSON (appended in place, not
        atomically: the checkpoint is the record of what was done, and :meth:`write_metrics`
        rewrites this file from it when the run goes on)."""
        path = self.path / "metrics.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        return path

    def write_checkpoint(self, *, params: Any, opt_state: Any, epoch: int, key: Any, config: dict,
                         history: list, extras: "dict | None" = None) -> pathlib.Path:
        """Writes ``checkpoint.ckpt`` (:func:`jbp.checkpoint.save`, which names every argument):
        what :func:`load_checkpoint` reads. What a private run keeps out of it (its keys, its
        noise state) is the caller's to leave out."""
        from jbp import checkpoint as ckpt

        path = self.path / "checkpoint.ckpt"
        ckpt.save(path, params=params, opt_state=opt_state, epoch=epoch, key=key, config=config, history=history,
                  extras=extras)
        return path

    def write_params(self, params: Any) -> pathlib.Path:
        """Writes ``params.npz``, the run's answer: ``W1, b1, …`` (:func:`jbp.checkpoint.save_params`)."""
        from jbp import checkpoint as ckpt

        path = self.path / "params.npz"
        ckpt.save_params(path, params)
        return path

    def write_summary(self, summary: dict) -> pathlib.Path:
        """Writes ``summary.json``: the final metrics (or a stopped private run's ε) as JSON,
        indented by two spaces, its keys in their order, no NaN or infinity."""
        return _write_json(self.path / "summary.json", summary)

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


# --- a run's configuration, the objects it describes, and reading a whole run back

CONFIG_DEFAULTS = {
    # keys added after the first release, with the value that reproduces a run written before them
    "standardize": None, "target": None, "header": None, "schedule": "constant", "warmup_epochs": 1.0,
    "decay_rate": 0.9, "momentum": None, "nesterov": False, "weight_decay": 0.0, "clip_norm": None,
    "patience": None, "steps_per_epoch": None, "schedule_epochs": None, "dtype": "float32",
    "dp_clip": None, "dp_noise": None, "dp_delta": None, "dp_epsilon": None, "rule": "backprop",
    "compute_dtype": None,
    # a private run's noise drawn from its seed (not private); null in runs from before the option, whose
    # noise came from the seed: read as true for a private run (check_config)
    "dp_reproducible": None,
    # records of what the run was trained with, checked when it is read back (None: a run from before them)
    "data_fingerprint": None, "preprocessing_sha256": None,
}
CONFIG_KEYS = ("sizes", "hidden", "output", "loss", "optimizer", "lr", "l2", "epochs", "batch_size", "seed", "data",
               "drop_last", *CONFIG_DEFAULTS)
SEED_LIMIT = 2**64
DTYPES = ("float32", "float64")
COMPUTE_DTYPES = ("bfloat16", "float16")
CONFIG_LIMIT = 1 << 20  # config.json is a few hundred bytes; a megabyte is more than any honest one


def check_config(config: Any, where: str) -> dict:
    """The schema of a run's configuration: every key, its type and range.

    Keys that a run written by an earlier jbp lacks are filled with the value
    that reproduces it (:data:`CONFIG_DEFAULTS`).

    Raises:
      FileFormatError: naming ``where`` and the first key that is wrong.

    Example:
      >>> from jbp.run import check_config
      >>> config = check_config({"sizes": [2, 4, 1], "hidden": ["tanh"], "output": "sigmoid",
      ...                        "loss": "binary_cross_entropy", "optimizer": "sgd", "lr": 0.1, "l2": 0.0,
      ...                        "epochs": 300, "batch_size": 4, "seed": 0, "data": "xor", "drop_last": False}, "mine")
      >>> config["rule"], config["dtype"], config["dp_reproducible"]
      ('backprop', 'float32', False)
      >>> try:
      ...     check_config({**config, "lr": 0}, "mine")
      ... except ValueError as err:
      ...     print(err)
      mine: lr must be a finite number > 0, got 0
    """
    if not isinstance(config, dict):
        raise FileFormatError(f"{where} must be a JSON object, got {type(config).__name__}")
    config = {**CONFIG_DEFAULTS, **config}
    _check_keys(config, where)
    for key, (ok, expected) in _config_checks().items():
        if not ok(config[key]):
            raise FileFormatError(f"{where}: {key} must be {expected}, got {config[key]!r:.80}")
    _check_together(config, where)
    return config


def _check_keys(config: dict, where: str) -> None:
    """Refuses a configuration without exactly the keys of :data:`CONFIG_KEYS`, naming those missing and unknown."""
    if set(config) != set(CONFIG_KEYS):
        missing, extra = sorted(set(CONFIG_KEYS) - set(config)), sorted(set(config) - set(CONFIG_KEYS))
        raise FileFormatError(
            f"{where} has the wrong keys" + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(extra)}" if extra else "")
        )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional(ok: "Callable[[Any], bool]") -> "Callable[[Any], bool]":
    return lambda value: value is None or ok(value)


def _config_checks() -> "dict[str, tuple[Callable[[Any], bool], str]]":
    """Every key of a configuration: the test its value must pass, and what the test wants, in words."""
    from jbp.activations import ACTIVATIONS
    from jbp.losses import LOSSES
    from jbp.optimizers import SCHEDULES, names

    whole, number, optional = _whole, _number, _optional
    return {
        "sizes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(whole(s) and s >= 1 for s in v), "at least two positive widths"),
        "hidden": (lambda v: isinstance(v, list) and len(v) >= 1 and all(h in ACTIVATIONS for h in v), "a list of activation names"),
        "output": (lambda v: v in ACTIVATIONS, "an activation name"),
        "loss": (lambda v: v in LOSSES, "a loss name"),
        "optimizer": (lambda v: v in names(), "an optax optimizer's name"),
        "lr": (lambda v: number(v) and v > 0, "a finite number > 0"),
        "l2": (lambda v: number(v) and v >= 0, "a finite number ≥ 0"),
        "epochs": (lambda v: whole(v) and v >= 1, "a positive whole number"),
        "batch_size": (lambda v: whole(v) and v >= 1, "a positive whole number"),
        "seed": (lambda v: whole(v) and 0 <= v < SEED_LIMIT, "a whole number in [0, 2^64)"),
        "data": (lambda v: isinstance(v, str) and v != "", "a data set's name"),
        "drop_last": (lambda v: isinstance(v, bool), "true or false"),
        "standardize": (optional(lambda v: isinstance(v, bool)), "true, false or null"),
        "target": (optional(lambda v: isinstance(v, (str, int)) and not isinstance(v, bool)), "a column's name or index, or null"),
        "header": (optional(lambda v: isinstance(v, bool)), "true, false or null"),
        "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        "warmup_epochs": (lambda v: number(v) and v >= 0, "a finite number ≥ 0"),
        "decay_rate": (lambda v: number(v) and v > 0, "a finite number > 0"),
        "momentum": (optional(lambda v: number(v) and 0 <= v < 1), "a number in [0, 1), or null"),
        "nesterov": (lambda v: isinstance(v, bool), "true or false"),
        "weight_decay": (lambda v: number(v) and v >= 0, "a finite number ≥ 0"),
        "clip_norm": (optional(lambda v: number(v) and v > 0), "a finite number > 0, or null"),
        "patience": (optional(lambda v: whole(v) and v >= 1), "a positive whole number, or null"),
        "steps_per_epoch": (optional(lambda v: whole(v) and v >= 1), "a positive whole number, or null"),
        "schedule_epochs": (optional(lambda v: whole(v) and v >= 1), "a positive whole number, or null"),
        "dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
        "dp_clip": (optional(lambda v: number(v) and v > 0), "a finite number > 0, or null"),
        "dp_noise": (optional(lambda v: number(v) and v >= 0), "a finite number ≥ 0, or null"),
        "dp_delta": (optional(lambda v: number(v) and 0 < v < 1), "a number in (0, 1), or null"),
        "dp_epsilon": (optional(lambda v: number(v) and v > 0), "a finite number > 0, or null"),
        "rule": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
        "compute_dtype": (optional(lambda v: v in COMPUTE_DTYPES), f"one of {', '.join(COMPUTE_DTYPES)}, or null"),
        "dp_reproducible": (optional(lambda v: isinstance(v, bool)), "true, false or null"),
        "data_fingerprint": (optional(_is_fingerprint), "null or {\"sha256\": 64 hex digits or null, \"rows\": "
                             "{\"train\", \"validation\", \"test\": whole numbers}}"),
        "preprocessing_sha256": (optional(_is_sha256), "64 hex digits, or null"),
    }


def _check_together(config: dict, where: str) -> None:
    """Refuses values that are each valid but do not go together (the hidden activations and the
    layers, a private run's options), and reads an old private run's missing ``dp_reproducible``
    as true (its noise came from its seed): ``config`` is changed in place."""
    hidden, n_hidden = config["hidden"], len(config["sizes"]) - 2
    if len(hidden) != 1 and len(hidden) != n_hidden:
        raise FileFormatError(f"{where}: hidden names {len(hidden)} activations for {n_hidden} hidden layers")
    if config["dp_clip"] is not None and (config["dp_noise"] is None or config["dp_delta"] is None):
        raise FileFormatError(f"{where}: a private run (dp_clip) needs dp_noise and dp_delta")
    if config["dp_reproducible"] is None:  # a run from before the option: a private one drew its noise from the seed
        config["dp_reproducible"] = config["dp_clip"] is not None
    if config["dp_reproducible"] and config["dp_clip"] is None:
        raise FileFormatError(f"{where}: dp_reproducible is an option of a private run (dp_clip)")
    if config["dp_clip"] is not None and config["rule"] != "backprop":
        raise FileFormatError(f"{where}: a private run trains with backprop, not {config['rule']}")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_fingerprint(value: Any) -> bool:
    rows = value.get("rows") if isinstance(value, dict) else None
    return (isinstance(value, dict) and set(value) in ({"sha256", "rows"}, {"sha256", "held_out_sha256", "rows"})
            and (value["sha256"] is None or _is_sha256(value["sha256"]))
            and (value.get("held_out_sha256") is None or _is_sha256(value["held_out_sha256"]))
            and isinstance(rows, dict) and set(rows) == set(SPLITS)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in rows.values()))


def _write_json(path: pathlib.Path, value: Any) -> pathlib.Path:
    """A small JSON file of a run, written atomically: indented by two spaces, one newline at the end."""
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2, allow_nan=False) + "\n").encode()))
    return path


def _read_json(path: "str | os.PathLike", name: str, limit: int, too_large: str) -> tuple[Any, pathlib.Path]:
    """A small JSON file of a run, read as untrusted bytes: a regular file, at most ``limit`` bytes."""
    path = regular_file(path, name)
    size = path.stat().st_size
    if size > limit:
        raise FileFormatError(f"{path} is {size} bytes; {too_large}")
    with open(path, "rb") as f:
        raw = read_into(f, size, path, name).tobytes()
    return parse_json(raw, path), path


def read_config(path: "str | os.PathLike") -> dict:
    """A run's ``config.json``, read as untrusted bytes and checked (:func:`check_config`)."""
    config, path = _read_json(path, "config.json", CONFIG_LIMIT,
                              "a run's configuration is far smaller (edited by hand?)")
    return check_config(config, str(path))


def key_from_seed(value: int) -> jax.Array:
    """A ``threefry`` key holding all 64 bits of the seed.

    ``jax.random.key(seed)`` keeps only the low 32 bits of a seed unless
    ``jax_enable_x64`` is on, so seeds ``5`` and ``2^32 + 5`` would give the
    same run; here both halves are kept. For seeds below ``2^32`` this is
    exactly ``jax.random.key(seed)``."""
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"a seed must lie in [0, 2^64), got {value}")
    return jax.random.wrap_key_data(np.array([value >> 32, value & 0xFFFFFFFF], np.uint32), impl="threefry2x32")


def hidden_per_layer(config: dict) -> list[str]:
    hidden, n_hidden = config["hidden"], len(config["sizes"]) - 2
    return list(hidden) * n_hidden if len(hidden) == 1 else list(hidden)


class Built(NamedTuple):
    """The objects a configuration describes."""

    net: Any
    loss: Any
    optimizer: Any
    init_key: jax.Array
    shuffle_key: jax.Array
    dtype: Any
    privacy: Any = None
    batch_size: int = 1
    feedback: Any = None

    def extras_like(self, params, patience: "int | None") -> "dict | None":
        """The extra trees a checkpoint of this run holds: the best epoch's parameters (early
        stopping) and a learning rule's matrices (Kolen-Pollack)."""
        extras = {}
        if patience is not None:
            extras["best_params"] = params
        if self.feedback is not None and self.feedback.learns:
            extras["feedback"] = self.feedback.matrices
        return extras or None

    @property
    def training_optimizer(self):
        """What the run's optimizer state belongs to: DP-SGD's noise then the optimizer, for a private run."""
        from jbp.privacy import private_optimizer

        if self.privacy is None:
            return self.optimizer
        return private_optimizer(self.privacy, self.optimizer, self.batch_size)

    def init(self):
        """The run's initial parameters, in its dtype."""
        from jbp.network import init

        return init(self.net, self.init_key, dtype=self.dtype)


def build(config: dict) -> Built:
    """The network, loss, optimizer and keys a run's configuration describes, exactly as the run
    that wrote it built them (the optimizer with its schedule, momentum, decay and clipping)."""
    from jbp import optimizers
    from jbp.losses import get_loss
    from jbp.network import mlp

    net = mlp(config["sizes"], hidden=hidden_per_layer(config), output=config["output"])
    key = key_from_seed(config["seed"])
    init_key, shuffle_key = jax.random.split(key)
    optimizer = optimizers.make(
        config["optimizer"], config["lr"], epochs=config["schedule_epochs"] or config["epochs"],
        steps_per_epoch=config["steps_per_epoch"] or 1, schedule_name=config["schedule"],
        warmup_epochs=config["warmup_epochs"], decay_rate=config["decay_rate"], momentum=config["momentum"],
        nesterov=config["nesterov"], weight_decay=config["weight_decay"], clip_norm=config["clip_norm"],
        key=jax.random.fold_in(key, 2),
    )
    if config["dtype"] == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("this run is float64: turn on jax_enable_x64 to load or continue it")
    privacy = None
    if config["dp_clip"] is not None:
        from jbp.privacy import dp_sgd

        noise_key = jax.random.fold_in(key, 3) if config["dp_reproducible"] else None  # None: the OS's entropy
        privacy = dp_sgd(config["dp_clip"], config["dp_noise"], noise_key, delta=config["dp_delta"])
    dtype = jnp.dtype(config["dtype"])
    feedback = None if config["rule"] == "backprop" else by_name(config["rule"], net, jax.random.fold_in(key, 4), dtype)
    return Built(net, get_loss(config["loss"]), optimizer, init_key, shuffle_key, dtype, privacy, config["batch_size"],
                 feedback)


class Run(NamedTuple):
    """A finished or stopped run, read back (:func:`load_run`).

    Attributes:
      net, loss, optimizer: as the run built them from its configuration.
      params: the run's answer: ``params.npz`` (with early stopping, the
        best epoch's), or the last checkpoint's when there is no params.npz.
      config: the configuration (``config.json``), checked.
      history: one record per epoch, from the checkpoint.
      preprocessing: how raw inputs and labels become what the network saw.
      checkpoint: the training state to continue from (parameters, optimizer
        state, epoch, key, history; the best epoch's parameters in ``extras``
        with early stopping).
      path: the run's folder.
    """

    net: Any
    loss: Any
    optimizer: Any
    params: tuple
    config: dict
    history: list
    preprocessing: Any
    checkpoint: Any
    path: pathlib.Path
    privacy: Any = None
    feedback: Any = None

    def fit_arguments(self, epochs: int) -> dict:
        """The keyword arguments that make :func:`jbp.fit` continue this run up to ``epochs``
        in all, as ``jbp train --resume`` does (pass ``X``, ``Y`` and ``validation`` besides)."""
        arguments = dict(
            loss=self.loss, optimizer=self.optimizer, epochs=epochs, batch_size=self.config["batch_size"],
            key=self.checkpoint.key, l2=self.config["l2"], drop_last=self.config["drop_last"],
            opt_state=self.checkpoint.opt_state, start_epoch=self.checkpoint.epoch, history=self.checkpoint.history,
        )
        if self.config["patience"] is not None:
            arguments.update(patience=self.config["patience"], best_params=self.checkpoint.extras["best_params"])
        if self.privacy is not None:
            arguments["privacy"] = self.privacy
        if self.feedback is not None:
            arguments["feedback"] = self.feedback
        return arguments


def read_preprocessing(path: "str | os.PathLike", sha256: "str | None" = None):
    """A run's ``preprocessing.json``, read as untrusted bytes and checked.

    Args:
      path: the file.
      sha256: the digest the run recorded of it (its configuration's
        ``preprocessing_sha256``, :func:`preprocessing_sha256`); None for a
        run written before jbp kept one.

    Raises:
      FileFormatError: for a file that is not JSON, breaks the schema, or
        whose digest is not the one recorded (an edited file).
    """
    from jbp.data.preprocessing import Preprocessing

    value, path = _read_json(path, "preprocessing.json", 256 * CONFIG_LIMIT,
                             "more than any preprocessing jbp writes")
    if sha256 is not None and preprocessing_sha256(value) != sha256:
        raise FileFormatError(f"{path} is not the preprocessing this run trained with: its SHA-256 differs from "
                              "the run's record (preprocessing_sha256 in its configuration); was it edited?")
    return Preprocessing.from_json(value, str(path))


# --- what a run records of its data and preprocessing, and the checks of a run's files against each other

SPLITS = ("train", "validation", "test")


def preprocessing_sha256(preprocessing: Any) -> str:
    """The SHA-256 of a preprocessing's canonical JSON (keys sorted, no spaces, ASCII).

    ``preprocessing`` is a :class:`~jbp.data.preprocessing.Preprocessing` or
    its JSON form as read from ``preprocessing.json``: both give the same
    digest, since JSON keeps every number jbp writes exactly.
    """
    value = preprocessing.to_json() if hasattr(preprocessing, "to_json") else preprocessing
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(dataset: Any, parts: "tuple[str, ...]") -> str:
    """SHA-256 of the named parts' inputs and labels: their names, dtypes, shapes and bytes (labels
    as 64-bit integers)."""
    digest = hashlib.sha256(b"jbp-data/1\n")
    for name in parts:
        part = getattr(dataset, name)
        for field, array in (("X", np.asarray(part.X)), ("labels", np.asarray(part.labels, np.int64))):
            array = np.ascontiguousarray(array)
            digest.update(f"{name}.{field} {array.dtype.str} {array.shape}\n".encode())
            digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def data_fingerprint(dataset: Any, *, private: bool = False) -> dict:
    """What a run records of the data it trained on: ``{"sha256": …, "rows": {"train": …, …}}``.

    The digest covers every part's inputs and labels: their names, dtypes,
    shapes and bytes (labels as 64-bit integers), so any changed, added or
    removed row, and any change of how the file is read, changes it.

    Args:
      dataset: a :class:`jbp.data.Dataset`.
      private: no digest of the training part (``sha256`` None): a digest of
        the exact training set is a function of every row that differential
        privacy does not cover, since whoever knows all rows but one could
        test guesses of the last one against it. The row counts and a digest
        of the held-out parts (``held_out_sha256``: validation and test,
        which the guarantee does not cover anyway) are kept, so a file whose
        held-out rows changed is still noticed.
    """
    rows = {name: int(len(getattr(dataset, name).X)) for name in SPLITS}
    if private:
        return {"sha256": None, "held_out_sha256": _digest(dataset, SPLITS[1:]), "rows": rows}
    return {"sha256": _digest(dataset, SPLITS), "rows": rows}


def run_inputs(folder: "str | os.PathLike") -> list[pathlib.Path]:
    """What a command reading a run also reads: its folder, and its data file or folder (for
    ``csv:``, ``npz:``, ``mnist:`` … data), so that no output of that command replaces them."""
    folder = pathlib.Path(folder)
    spec = read_config(folder / "config.json")["data"]
    return [folder] + ([pathlib.Path(spec.split(":", 1)[1]).expanduser()] if ":" in spec else [])


def check_data(config: dict, dataset: Any, where: Any, hint: str = "") -> None:
    """Refuses data that are not those the run trained on (its configuration's ``data_fingerprint``).

    A run written before jbp kept a fingerprint passes unchecked.

    Raises:
      ValueError: saying that the data changed and how (the row counts of each part, or the same
        counts with other values), followed by ``hint``.
    """
    saved = config.get("data_fingerprint")
    if saved is None:
        return
    now = data_fingerprint(dataset, private=saved["sha256"] is None)
    if "held_out_sha256" not in saved:  # a private run recorded before the held-out digest: its row counts
        now.pop("held_out_sha256", None)
    if now == saved:
        return
    counts = lambda f: ", ".join(f"{name} {f['rows'][name]}" for name in SPLITS)  # noqa: E731
    how = (f"the rows were {counts(saved)}, they are {counts(now)}" if now["rows"] != saved["rows"]
           else "the row counts are the same, the values are not")
    raise ValueError(f"the data {config['data']} changed since the run in {where} was trained on it: {how}"
                     + (f"; {hint}" if hint else ""))


def check_preprocessing(preprocessing: Any, sizes: "list[int]", where: Any) -> None:
    """Refuses a preprocessing that does not fit the run's network.

    The classes must be one per output (two for a single sigmoid output),
    the statistics one per input. (What can be checked without the network,
    a divisor in range, a positive std, two classes or more, is
    :meth:`~jbp.data.preprocessing.Preprocessing.from_json`'s.)

    Raises:
      FileFormatError: naming ``where`` and what does not fit.
    """
    n_in, n_out = sizes[0], sizes[-1]
    classes = len(preprocessing.classes)
    if classes != (2 if n_out == 1 else n_out):
        raise FileFormatError(f"{where} names {classes} class{'es' * (classes != 1)} for a network of {n_out} "
                              f"output{'s' * (n_out != 1)}; it needs {2 if n_out == 1 else n_out}")
    for name in ("mean", "std"):
        stats = getattr(preprocessing, name)
        if stats is not None and len(stats) != n_in:
            raise FileFormatError(f"{where}: {name} has {len(stats)} values for a network of {n_in} inputs")


RESUME_MAY_CHANGE = ("epochs", "schedule_epochs")
"""The keys of ``config.json`` that ``--resume`` rewrites before the checkpoint catches up."""


def check_against_checkpoint(config: dict, saved: Any, config_path: Any, checkpoint_path: Any) -> dict:
    """Refuses a configuration that differs from the one the checkpoint holds (an edited ``config.json``).

    The checkpoint's own copy (checked against the schema) is the run's:
    every key must agree but :data:`RESUME_MAY_CHANGE`. Used by
    :func:`load_run` and by ``jbp train --resume``.

    Returns:
      The checkpoint's configuration, checked.

    Raises:
      FileFormatError: naming both files, the keys that differ and the first difference.
    """
    saved = check_config(saved, f"{checkpoint_path}: its configuration")
    differ = [k for k in CONFIG_KEYS if k not in RESUME_MAY_CHANGE and saved[k] != config[k]]
    if differ:
        first = differ[0]
        others = f" (and on {', '.join(differ[1:])})" if differ[1:] else ""
        raise FileFormatError(
            f"{config_path} and the checkpoint disagree on {first}: {_short(config[first])} in "
            f"{pathlib.Path(config_path).name}, {_short(saved[first])} in {pathlib.Path(checkpoint_path).name}{others}; "
            "the checkpoint's configuration is the run's (was config.json edited?)"
        )
    return saved


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def run_folder_of(path: "str | os.PathLike") -> "pathlib.Path | None":
    """The jbp run folder that ``path`` lies in (the folder itself, or any folder above it), or None.

    A folder is a run's when it holds the lock a run takes (``.jbp.lock``)
    or a ``checkpoint.ckpt``, or a ``config.json`` beside another of the
    files a run writes (:data:`FILES`). Links and ``..`` are resolved first.
    """
    here = pathlib.Path(os.path.realpath(path))
    for folder in (here, *here.parents):
        has = lambda name: os.path.lexists(folder / name)  # noqa: E731
        if has(LOCK) or has("checkpoint.ckpt") or (has("config.json") and any(has(n) for n in FILES if n != "config.json")):
            return folder
    return None


def check_output(path: "str | os.PathLike", *, inputs: "Iterable[str | os.PathLike]" = (),
                 option: str = "--out") -> pathlib.Path:
    """Refuses an output file whose writing would destroy something the user did not mean to replace.

    Checked in this order, before any work and again just before writing:

    1. What is at the path must be nothing or a regular file with one link
       (:func:`jbp.files.check_replaceable`): a symbolic link, a folder, a
       FIFO, a device, a socket or a file with other hard links is refused.
    2. Its folder must exist.
    3. It must not be one of ``inputs`` (the same device and inode, however
       spelled: through links, ``..``, another name); an input that is a
       folder stands for the files directly in it.
    4. It must not lie inside a run's folder (:func:`run_folder_of`): a
       run's folder holds the run's own files only, and writing there could
       replace its checkpoint, parameters or configuration.

    Returns:
      The path.

    Raises:
      FileFormatError: (a ``ValueError``) naming ``option``, the path and the reason.
    """
    path = pathlib.Path(path)
    try:
        check_replaceable(path, one_link=True)
    except FileFormatError as err:
        raise FileFormatError(f"{option} {err}") from None
    if not path.parent.is_dir():
        raise FileFormatError(f"{option} {path}: no folder {path.parent} to write it in")
    folder = run_folder_of(path.parent)
    if folder is not None:
        raise FileFormatError(f"{option} {path} lies inside the run folder {folder}; a run's folder holds the run's "
                              "own files only: name a file outside it")
    if os.path.lexists(path):
        target = os.stat(path)
        for source in inputs:
            source = pathlib.Path(source)
            try:
                candidates = list(source.iterdir()) if source.is_dir() else [source]
            except OSError:
                candidates = [source]
            for candidate in candidates:
                try:
                    same = os.path.samestat(os.stat(candidate), target)
                except OSError:
                    continue
                if same:
                    raise FileFormatError(f"{option} {path} is the input {candidate}; jbp never writes over its own "
                                          "input: name another file")
    return path


def load_checkpoint(folder: "str | os.PathLike", config: dict, built: Built, limit: "int | str | None" = None):
    """The checkpoint of the run in ``folder``, loaded into the structure its configuration builds
    and checked against that configuration (:func:`check_against_checkpoint`): what :func:`load_run`
    and ``jbp train --resume`` read."""
    from jbp import checkpoint as ckpt

    folder = pathlib.Path(folder)
    template = built.init()
    state = ckpt.load(folder / "checkpoint.ckpt", params_like=template,
                      opt_state_like=built.training_optimizer.init(template), limit=limit,
                      extras_like=built.extras_like(template, config["patience"]))
    check_against_checkpoint(config, state.config, folder / "config.json", folder / "checkpoint.ckpt")
    return state


def load_run(path: "str | os.PathLike", limit: "int | str | None" = None) -> Run:
    """Reads a run's folder back: the objects :func:`jbp.fit` works with, every file checked.

    Args:
      path: the folder ``jbp train`` wrote.
      limit: the largest file read (:func:`jbp.files.max_bytes`).

    Returns:
      A :class:`Run`.

    The files are checked against each other: ``config.json`` against the
    configuration the checkpoint holds (:func:`check_against_checkpoint`),
    ``preprocessing.json`` against the digest the configuration recorded
    and against the network (:func:`check_preprocessing`).

    Raises:
      FileNotFoundError: for a folder with no checkpoint or configuration.
      FileFormatError: (a ``ValueError``) for any file that is not what the
        run wrote, or that disagrees with another of the run's files, naming it.

    Example (continuing a run to 60 epochs)::

        run = jbp.load_run("runs/digits-20261123-120000")
        data = jbp.data.load(run.config["data"])
        result = jbp.fit(run.net, run.checkpoint.params, data.train.X, data.train.Y,
                         validation=(data.validation.X, data.validation.Y), **run.fit_arguments(60))
    """
    from jbp import checkpoint as ckpt

    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run at {folder}" if not folder.exists() else f"{folder} is a file, not a run's folder")
    config = read_config(folder / "config.json")
    built = build(config)
    template = built.init()
    state = load_checkpoint(folder, config, built, limit)
    feedback = built.feedback
    if feedback is not None and feedback.learns:
        feedback = feedback.replace(state.extras["feedback"])
    params = state.params
    if (folder / "params.npz").exists():
        params = ckpt.load_params(folder / "params.npz", limit=limit)
        shapes = [(layer.W.shape, layer.b.shape) for layer in template]
        if [(layer.W.shape, layer.b.shape) for layer in params] != shapes:
            raise FileFormatError(f"{folder / 'params.npz'} does not fit the network of {folder / 'config.json'}")
    if os.path.lexists(folder / "preprocessing.json") or config["preprocessing_sha256"] is not None:
        preprocessing = read_preprocessing(folder / "preprocessing.json", config["preprocessing_sha256"])
        where = folder / "preprocessing.json"
    else:  # a run written before preprocessing was kept: rebuild it from the data
        from jbp import data

        dataset = data.load(config["data"], limit, standardize=config["standardize"], target=config["target"],
                            header=config["header"])
        check_data(config, dataset, folder)
        preprocessing, where = dataset.preprocessing, f"the preprocessing of {config['data']}"
    check_preprocessing(preprocessing, config["sizes"], where)
    return Run(built.net, built.loss, built.optimizer, params, config, state.history, preprocessing, state, folder,
               built.privacy, feedback)
