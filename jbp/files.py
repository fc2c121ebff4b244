"""Files: atomic writes, and reads of untrusted bytes within stated limits.

Every file jbp reads (IDX images, ``.npz`` archives, checkpoints, a run's
JSON) may be truncated, corrupted, hand-edited or built to do harm. The
readers here follow three rules, in this order:

1. Look at the header before the data: the declared sizes are compared with
   the limit and with the bytes really there *before* anything is allocated
   or inflated.
2. Read only what is known: an archive's members are opened by name, never
   all of them; a member whose declared size is above the limit is refused
   unread.
3. Stream with a bound: a compressed stream is read up to the size its
   header declared and one byte more, so a small file that would inflate to
   gigabytes costs at most what it declared.

The limit is one number, the most bytes one file or one archive member may
hold (after decompression): :data:`DEFAULT_MAX_BYTES` (2 GiB) unless the
environment variable ``JBP_MAX_BYTES`` or a reader's ``max_bytes`` argument
says otherwise (``jbp train --max-bytes``). Sizes are bytes, or a number with
a ``K``, ``M``, ``G`` or ``T`` suffix (powers of 1024).

Anything that is not what it should be raises :class:`FileFormatError` (a
``ValueError``) naming the file and what is wrong with it; nothing is ever
unpickled. JSON is parsed by one function (:func:`parse_json`), which refuses
nesting deeper than :data:`JSON_MAX_DEPTH` instead of letting the parser
recurse; zip archives are opened by one function, which turns every error the
``zipfile`` module can raise on bad bytes (``NotImplementedError`` for an
unknown version or compression among them) into :class:`FileFormatError`.

Writes go through :func:`atomic_write`, which replaces only a regular file
(or creates one): a symbolic link, a folder, a device, a FIFO or a socket at
the path is refused, never replaced (see :func:`check_replaceable`).
"""

import json
import math
import os
import pathlib
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Any

import numpy as np

DEFAULT_MAX_BYTES = 2 * 1024**3
"""The default limit: 2 GiB for one file or one archive member."""

ENVIRONMENT = "JBP_MAX_BYTES"
CHUNK = 1 << 20  # bytes read at once while streaming
GZIP_MAX_RATIO = 1032  # deflate cannot inflate one byte to more than about 1032
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
JSON_MAX_DEPTH = 64
"""The deepest nesting of arrays and objects :func:`parse_json` accepts (jbp's own files nest 4 deep)."""
# what zipfile raises on bytes it cannot read: BadZipFile for most, NotImplementedError for an unknown
# version or compression method, RuntimeError for encryption, struct/zlib/EOF/OS errors for the rest
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
              NotImplementedError, RuntimeError)


class FileFormatError(ValueError):
    """A file that cannot be used: malformed, truncated, too large or of the wrong kind."""


def parse_size(text: "str | int") -> int:
    """``"2G"`` → 2147483648; plain integers are bytes.

    Raises:
      ValueError: for anything that is not a positive size.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise ValueError(f"a size must be a number of bytes, optionally with K, M, G or T, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return value


def max_bytes(value: "int | str | None" = None) -> int:
    """The limit in force: ``value`` if given, else ``$JBP_MAX_BYTES``, else 2 GiB."""
    if value is not None:
        return parse_size(value)
    text = os.environ.get(ENVIRONMENT)
    if text is None or not text.strip():
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as err:
        raise ValueError(f"${ENVIRONMENT}: {err}") from None


def describe_size(n: int) -> str:
    """``2147483648`` → ``'2 GiB'``: for messages."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def too_large(path: Any, what: str, size: int, limit: int) -> FileFormatError:
    return FileFormatError(
        f"{path}: {what} is {describe_size(size)} ({size} bytes), above the limit of "
        f"{describe_size(limit)}; raise it with --max-bytes or ${ENVIRONMENT} if the file is trusted"
    )


def regular_file(path: "str | os.PathLike", what: str = "file") -> pathlib.Path:
    """The path, if it names a regular file (symbolic links followed).

    Raises:
      FileNotFoundError: when nothing is there.
      FileFormatError: for a folder, a device or a pipe.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise FileFormatError(f"{path} is {kind}; expected a {what}")
    return path


def read_exact(stream: IO[bytes], n: int, path: Any, what: str) -> bytes:
    """Exactly ``n`` bytes, or :class:`FileFormatError` saying the file ended early."""
    data = stream.read(n)
    if len(data) != n:
        raise FileFormatError(f"{path} is truncated: it ends inside {what} ({len(data)} of {n} bytes)")
    return data


def read_into(stream: IO[bytes], nbytes: int, path: Any, what: str) -> np.ndarray:
    """Reads exactly ``nbytes`` into a new uint8 array, then checks that the stream ends there.

    The array is allocated once (``nbytes`` was checked against the limit by
    the caller); a stream with more data than declared is refused after one
    extra byte, so a decompression bomb costs no more than it declared.
    """
    out = np.empty(nbytes, np.uint8)
    view, filled = memoryview(out), 0
    while filled < nbytes:
        got = stream.readinto(view[filled : filled + CHUNK])
        if not got:
            raise FileFormatError(
                f"{path} is truncated: {what} holds {filled} bytes, its header declares {nbytes}"
            )
        filled += got
    if stream.read(1):
        raise FileFormatError(f"{path}: {what} holds more bytes than its header declares ({nbytes})")
    return out


def atomic_write(path: "str | os.PathLike", write: Callable[[IO[bytes]], None], *, one_link: bool = False) -> None:
    """Writes a file through ``write(f)`` to a temporary name, fsyncs it, and renames it over ``path``.

    The temporary file sits beside ``path`` as ``.NAME.jbp-XXXXXXXX.tmp``
    (see :func:`temporary_files`); on any failure (a full disk, Ctrl-C) it is
    removed and the old file, if any, is untouched.

    Only a regular file is ever replaced (:func:`check_replaceable`), checked
    before anything is written and again just before the rename; whatever
    else is there (a symbolic link, a folder, a device, a FIFO, a socket)
    stays as it was and :class:`FileFormatError` names it. The second check
    narrows the window in which something else could appear at the path; it
    cannot close it (no system call renames only over a regular file).

    Args:
      one_link: also refuse a regular file with more than one hard link (for
        a file the user named: the rename would leave its other names holding
        the old bytes). A run's own files leave it off, so that a copy of a
        run made with hard links (``cp -al``) keeps the original's bytes.
    """
    path = pathlib.Path(path)
    check_replaceable(path, one_link=one_link)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.jbp-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have given; mkstemp makes it private
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_replaceable(path, one_link=one_link)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What an ``os.lstat`` mode names: ``"a regular file"``, ``"a symbolic link"``, ``"a FIFO (named pipe)"``, …"""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_replaceable(path: "str | os.PathLike", *, one_link: bool = False) -> None:
    """Refuses a path where writing a new file would destroy something other than a regular file.

    Nothing there, or a regular file, is fine. The path itself is examined
    (``os.lstat``), so a symbolic link is refused rather than followed:
    replacing it would put a regular file in place of the link and leave
    its target as it was, and following it would write wherever the link
    points (as coreutils' careful tools, jbp does neither).

    Raises:
      FileFormatError: naming the path and what it is (a symbolic link, a
        folder, a FIFO, a device, a socket; with ``one_link``, a file with
        several hard links).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    kind = file_kind(info.st_mode)
    if kind != "a regular file":
        raise FileFormatError(f"{path} is {kind}; jbp writes only a new file or over a regular file, "
                              "so it is left as it is: name another file")
    if one_link and info.st_nlink > 1:
        raise FileFormatError(f"{path} has {info.st_nlink} hard links; writing a new file in its place would "
                              "leave the other names with the old bytes, so it is left as it is: name another file")


def parse_json(raw: "bytes | str", label: Any, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """JSON read from an untrusted file: UTF-8, strict (no ``NaN`` or ``Infinity``), nested at most ``max_depth`` deep.

    The depth is counted on the bytes before the parser runs (the parser
    recurses once per level, and a file of ``[[[[…`` would exhaust Python's
    stack), so the value returned can be walked by any recursive code.

    Raises:
      FileFormatError: naming ``label``, for bytes that are not UTF-8, not
        JSON, or nested too deep.
    """
    try:
        text = raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{label} is not valid JSON: {err}") from None
    depth = _json_depth(text)
    if depth > max_depth:
        raise FileFormatError(f"{label} is not a file jbp wrote: its JSON nests {depth} levels deep, "
                              f"more than the {max_depth} jbp reads")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise FileFormatError(f"{label} is not valid JSON: {err}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (jbp never writes it)")


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (one pass; the regular expression skips strings)."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_files(folder: "str | os.PathLike", names: Iterable[str]) -> list[pathlib.Path]:
    """The temporary files :func:`atomic_write` left in ``folder`` for these file names.

    Only names of exactly that form (``.NAME.jbp-`` then the eight characters
    ``tempfile`` draws, then ``.tmp``) and regular files: nothing that jbp did
    not write matches.
    """
    folder = pathlib.Path(folder)
    pattern = re.compile(
        r"\.(" + "|".join(re.escape(n) for n in names) + r")\.jbp-[a-z0-9_]{8}\.tmp"
    )
    return sorted(
        p for p in folder.iterdir()
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()
    )


# --- .npz archives: named members, each a .npy array, read within the limit.


def _npy_header(stream: IO[bytes], path: Any, name: str, kinds: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Reads a .npy header (magic, version, dictionary); returns shape, order, dtype and its length."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise FileFormatError(f"{path}: member {name!r} is not a readable .npy array: {err}") from None
    if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None:
        wanted = "numbers" if kinds == "biuf" else "numbers or fixed-width strings"
        raise FileFormatError(
            f"{path}: member {name!r} holds {dtype} values; only {wanted} are read (nothing is unpickled)"
        )
    return tuple(int(d) for d in shape), bool(fortran), dtype, stream.tell()


def _open_zip(path: Any, label: Any, limit: int) -> zipfile.ZipFile:
    if isinstance(path, (str, os.PathLike)):
        source = regular_file(path, "file")
        if source.stat().st_size > limit:
            raise too_large(label, "the archive", source.stat().st_size, limit)
    else:
        source = path
    try:
        return zipfile.ZipFile(source)
    except ZIP_ERRORS as err:
        raise FileFormatError(f"{label} is not a readable .npz (zip) archive: {err}") from None


def _member_names(archive: zipfile.ZipFile, label: Any) -> list[str]:
    names = [info.filename[:-4] if info.filename.endswith(".npy") else info.filename for info in archive.infolist()]
    if len(set(names)) != len(names):
        raise FileFormatError(f"{label}: an archive member name appears twice")
    return names


def npz_names(path: "str | os.PathLike", limit: "int | None" = None) -> list[str]:
    """The names of an ``.npz`` archive's members (without ``.npy``), none of them read."""
    with _open_zip(path, path, max_bytes(limit)) as archive:
        return _member_names(archive, path)


def read_npz(
    path: "str | os.PathLike | IO[bytes]",
    names: Iterable[str],
    *,
    limit: "int | None" = None,
    unknown: str = "ignore",
    label: Any = None,
    kinds: str = "biuf",
) -> dict[str, np.ndarray]:
    """Reads the named arrays of an ``.npz`` archive, and nothing else.

    Args:
      path: the archive, or a binary file object holding one.
      names: the arrays wanted (without ``.npy``); those absent are simply
        not in the result (the caller says whether that is an error).
      limit: the most bytes one member may hold (:func:`max_bytes` if None).
      unknown: ``"ignore"`` (members not asked for are left unread) or
        ``"refuse"`` (their presence is an error).
      label: how to name the file in messages (default: ``path``).
      kinds: the dtype kinds accepted (NumPy's codes): numbers by default;
        add ``U`` for fixed-width unicode labels. Object arrays never.

    Returns:
      ``{name: array}`` for the names found.

    Raises:
      FileFormatError: for a file that is not a zip archive, a member that is
        corrupt, not a plain numeric array, declared larger than the limit,
        or whose bytes disagree with its header; an unknown or repeated
        member when ``unknown="refuse"``.
    """
    limit, wanted = max_bytes(limit), set(names)
    label = label if label is not None else path
    with _open_zip(path, label, limit) as archive:
        infos = archive.infolist()
        members = _member_names(archive, label)
        strangers = [m for m in members if m not in wanted]
        if strangers and unknown == "refuse":
            shown = ", ".join(repr(s) for s in strangers[:5]) + (" …" if len(strangers) > 5 else "")
            raise FileFormatError(f"{label} holds members jbp did not write: {shown}")
        arrays = {}
        for info, name in zip(infos, members):
            if name not in wanted:
                continue
            if info.file_size > limit:
                raise too_large(label, f"member {name!r}", info.file_size, limit)
            try:
                with archive.open(info) as stream:
                    shape, fortran, dtype, offset = _npy_header(stream, label, name, kinds)
                    nbytes = math.prod(shape) * dtype.itemsize
                    if offset + nbytes != info.file_size:
                        raise FileFormatError(
                            f"{label}: member {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) "
                            f"but holds {info.file_size - offset}"
                        )
                    raw = read_into(stream, nbytes, label, f"member {name!r}")
            except ZIP_ERRORS as err:
                if isinstance(err, FileFormatError):
                    raise
                raise FileFormatError(f"{label}: member {name!r} is corrupt: {err}") from None
            arrays[name] = raw.view(dtype).reshape(shape, order="F" if fortran else "C")
    return arrays


def write_npz(f: IO[bytes], arrays: "dict[str, np.ndarray]") -> None:
    """``np.savez`` into an open file, refusing anything that would need pickle."""
    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise TypeError(f"{name}: object arrays are not written")
    np.savez(f, **arrays)
