"""Files written so that a reader never sees half of one, and arrays of rows on disk.

    atomic_write(path, lambda tmp: torch.save(state, tmp))   # written under a temporary name, then renamed
    save_json(obj, path)                                     # the same, for JSON
    swap_in(tmp_folder, folder)                              # a finished folder replaces the old one whole
    NpyRowWriter(path, n_rows, (160000,)) / read_npy_rows(path, start, stop) / shrink_npy_rows(path, n)
    write_npy_rows(path, start, rows) / keep_npy_rows(path, keep)           # rows replaced, rows dropped, in place

The .npy row files are written and read with plain file I/O: a memmap's touched pages would count in the
process's memory, which must stay flat whatever the size of the cache.
"""
import json
import os
import shutil

import numpy as np


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to path: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, extension = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{extension}"  # keeps the extension: some writers check it (.onnx)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def swap_in(tmp, final):
    """Replace folder `final` by the finished folder `tmp`. The old one is renamed aside first and removed only
    after the swap, so `final` is always either the old folder or the new one."""
    final = final.rstrip("/")
    if os.path.exists(final):
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def save_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write)


def npy_header(f):
    """(shape, dtype, data offset, format version) of an open .npy file, positioned anywhere."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    if fortran_order:
        raise ValueError(f"{f.name}: not a C-order array")
    return shape, dtype, f.tell(), version


def shrink_npy_rows(path, n_rows):
    """Keep the first n_rows of a C-order .npy array in place: rewrite the header's shape (padded to its old
    length, as numpy pads it) and truncate the file. No copy, so neither memory nor disk grows."""
    with open(path, "r+b") as f:
        shape, dtype, offset, version = npy_header(f)
        header = repr(dict(descr=np.lib.format.dtype_to_descr(dtype), fortran_order=False,
                           shape=(n_rows,) + tuple(shape[1:])))
        prefix = 10 if version == (1, 0) else 12  # magic, version, header length field
        padded = header.ljust(offset - prefix - 1) + "\n"
        f.seek(prefix)
        f.write(padded.encode("latin1"))
        f.truncate(offset + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


class NpyRowWriter:
    """Write an (n_rows, *row_shape) .npy file block by block, in order; close() keeps the rows written (the
    unused tail of a run whose files partly failed is cut off in place)."""

    def __init__(self, path, n_rows, row_shape, dtype=np.float16):
        self.path, self.dtype, self.n_rows, self.written = path, np.dtype(dtype), n_rows, 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, dict(
            descr=np.lib.format.dtype_to_descr(self.dtype), fortran_order=False, shape=(n_rows,) + tuple(row_shape)))

    def write(self, rows):
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.written + len(rows) > self.n_rows:
            raise ValueError(f"{self.path}: more than {self.n_rows} rows")
        self.file.write(rows.tobytes())
        self.written += len(rows)

    def close(self):
        self.file.close()
        if self.written < self.n_rows:
            shrink_npy_rows(self.path, self.written)
        return self.written


def read_npy_rows(path, start, stop):
    """Rows start..stop of a .npy file, read with a file read (not mapped)."""
    with open(path, "rb") as f:
        shape, dtype, offset, _ = npy_header(f)
        row = int(np.prod(shape[1:], dtype=np.int64))
        stop = min(stop, shape[0])
        f.seek(offset + start * row * dtype.itemsize)
        return np.fromfile(f, dtype=dtype, count=max(0, stop - start) * row).reshape((-1,) + tuple(shape[1:]))


def write_npy_rows(path, start, rows):
    """Overwrite rows start.. of a .npy file in place, with a file write (not mapped)."""
    with open(path, "r+b") as f:
        shape, dtype, offset, _ = npy_header(f)
        rows = np.ascontiguousarray(rows, dtype=dtype)
        if start + len(rows) > shape[0]:
            raise ValueError(f"{path}: rows {start}..{start + len(rows)} past its {shape[0]}")
        f.seek(offset + start * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        f.write(rows.tobytes())


def keep_npy_rows(path, keep):
    """Keep the rows of a .npy file where `keep` is True, in order, in place: the rows after the first dropped one
    move up one by one (memory stays flat), then the tail is cut off. Returns the rows kept."""
    keep = np.asarray(keep, dtype=bool)
    dropped = np.flatnonzero(~keep)
    if len(dropped):
        with open(path, "r+b") as f:
            shape, dtype, offset, _ = npy_header(f)
            size = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            to = int(dropped[0])
            for i in np.flatnonzero(keep[to:]) + to:
                f.seek(offset + int(i) * size)
                row = f.read(size)
                f.seek(offset + to * size)
                f.write(row)
                to += 1
        shrink_npy_rows(path, int(keep.sum()))
    return int(keep.sum())


def file_digest(path):
    """sha256 of a file's content (what a run depends on, wherever the file lies and whenever it was touched)."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
