"""IDX files (the MNIST format), gzipped or not, read as untrusted bytes.

The format: two zero bytes, a type code, the number of dimensions ``d``,
then ``d`` big-endian 32-bit sizes, then the values, row-major. The header
is read first; the size it declares is checked against the limit
(:func:`jbp.files.max_bytes`) and, for a plain file, against the file's real
length before any data is read. A gzipped file is inflated as a stream and
never beyond the size its header declares (plus one byte, to see that it
ends there): a small file that would inflate to gigabytes is refused after
reading what it declared.
"""

import gzip
import math
import os
import zlib

import numpy as np

from jbp.files import (
    GZIP_MAX_RATIO,
    FileFormatError,
    max_bytes,
    read_exact,
    read_into,
    regular_file,
    too_large,
)

TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""IDX type codes and their NumPy dtypes."""

MAX_DIMENSIONS = 16  # no real IDX file has more; a larger count is a corrupt header


def read_idx(path: "str | os.PathLike", limit: "int | str | None" = None) -> np.ndarray:
    """Reads one IDX file, gzipped or not, within the size limit.

    Args:
      path: the file.
      limit: the most bytes its data may hold (default
        :func:`jbp.files.max_bytes`, 2 GiB unless ``$JBP_MAX_BYTES``).

    Returns:
      The array, of the dtype and shape its header declares (read-only).

    Raises:
      FileNotFoundError: when there is no file.
      FileFormatError: (a ``ValueError``) for a file that is not IDX, a
        header that declares more than the limit or more or fewer bytes than
        the file holds, a corrupt gzip stream.
    """
    path = regular_file(path, "IDX file")
    limit, size = max_bytes(limit), path.stat().st_size
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            head = read_exact(stream, 4, path, "the IDX header")
            if head[:2] != b"\x00\x00" or head[2] not in TYPES or not 1 <= head[3] <= MAX_DIMENSIONS:
                raise FileFormatError(
                    f"{path} is not an IDX file (its first bytes are {head.hex()}: expected 0000, a type "
                    f"code of {', '.join(f'{c:02x}' for c in TYPES)}, and 1 to {MAX_DIMENSIONS} dimensions)"
                )
            ndim = head[3]
            shape = tuple(int(d) for d in np.frombuffer(read_exact(stream, 4 * ndim, path, "the IDX header"), ">u4"))
            dtype = np.dtype(TYPES[head[2]])
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > limit:
                raise too_large(path, f"the data its header declares (shape {shape}, {dtype})", nbytes, limit)
            if not compressed and size != 4 + 4 * ndim + nbytes:
                raise FileFormatError(
                    f"{path}: {size} bytes, but its header (shape {shape}, {dtype}) needs {4 + 4 * ndim + nbytes}"
                )
            if compressed and nbytes > GZIP_MAX_RATIO * size + 1024:
                raise FileFormatError(
                    f"{path}: a gzip file of {size} bytes cannot inflate to the {nbytes} bytes its header declares"
                )
            data = read_into(stream, nbytes, path, "the IDX data")
        except (gzip.BadGzipFile, zlib.error, EOFError) as err:
            raise FileFormatError(f"{path} is not a readable gzip file: {err or type(err).__name__}") from None
    array = data.view(dtype).reshape(shape)
    array.flags.writeable = False
    return array
