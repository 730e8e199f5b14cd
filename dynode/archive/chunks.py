"""Chunk files: whole chunks of a zarr v3 array written straight to their files.

A chunk file is what zarr writes for a chunk of an array whose codecs are ``bytes``
(little-endian), an optional compressor and ``crc32c``: the encoded bytes, then their crc32c
as 4 little-endian bytes. :class:`ChunkFiles` writes exactly those bytes, from the calling
thread, under a temporary name beside the target, and renames it into place (a chunk file
appears whole or not at all, as with zarr's local store).

Why not zarr's own write path: it hands every chunk to its event-loop thread, which runs the
compressor and the file write in further worker threads; on conv4 (8.3 MB per step) that
orchestration was about a fifth of the writer's CPU, and every hop contends with the solver.

Where the bytes go (``cache_chunks``):

* ``False`` (default): past the page cache. The file is opened with ``O_DIRECT`` and written
  from page-aligned memory (a block buffer that :func:`aligned_empty` allocated, as the
  streamer's are, is written in place; anything else is copied into an aligned scratch
  buffer first), padded to whole pages and cut to its length. Measured on the 2-core VM
  (ext4 on a virtio disk): 839 MB in 8 MB writes cost 0.12 s of CPU with ``O_DIRECT``
  against 2.4 s through the page cache once its writeback runs (``dd ... oflag=direct``
  vs ``conv=fdatasync``); writeback is CPU that a run's compute threads need. Where the file
  system refuses ``O_DIRECT`` (``EINVAL``), the chunk is written through the page cache and
  its pages dropped once written (``POSIX_FADV_DONTNEED``: writeback starts without waiting,
  and the array's next chunk drops the then clean pages).
* ``True``: through the page cache, left there as zarr leaves them (reading the archive back
  at once is then faster; the writeback happens later, in the kernel's threads).
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import numpy as np

from dynode.errors import ArchiveError

ALIGN = 4096  # O_DIRECT alignment of memory, file offsets and lengths (any logical block size up to a page)
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux (and some BSDs); elsewhere the page-cache path


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` whose first byte is :data:`ALIGN`-aligned."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes]


class ChunkFiles:
    """Whole chunks along time of one zarr v3 array, each written as one file (see the module).

    :meth:`of` returns ``None`` for an array it cannot write byte-for-byte as zarr would
    (another store, codec, or a big-endian machine): its writer then falls back to
    ``arr[n0:n1] = data``.
    """

    def __init__(self, folder: Path, arr, encode, cache_chunks: bool = False):
        self.folder, self.arr, self.encode = folder, arr, encode
        self.cache_chunks = bool(cache_chunks)
        self.direct = (not self.cache_chunks) and bool(_O_DIRECT)  # False once the file system refused it
        self._last: Path | None = None  # the previous chunk file, to drop from the cache
        self.chunks = tuple(arr.chunks)
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self.fill = arr.metadata.fill_value
        self._made: set[Path] = set()
        self._scratch: np.ndarray | None = None

    @classmethod
    def of(cls, arr, cache_chunks: bool = False) -> ChunkFiles | None:
        import sys

        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        from zarr.storage import LocalStore

        meta = arr.metadata
        codecs = tuple(getattr(meta, "codecs", ()))
        if (sys.byteorder != "little" or not isinstance(arr.store, LocalStore)
                or not isinstance(meta.chunk_key_encoding, DefaultChunkKeyEncoding)
                or len(codecs) not in (2, 3) or not isinstance(codecs[0], BytesCodec)
                or getattr(codecs[0].endian, "value", codecs[0].endian) not in ("little", None)
                or not isinstance(codecs[-1], Crc32cCodec) or np.dtype(arr.dtype).hasobject
                or 0 in tuple(arr.chunks) or tuple(arr.chunks[1:]) != tuple(arr.shape[1:])):
            return None
        compress = None
        if len(codecs) == 3:
            c = codecs[1]
            if isinstance(c, BloscCodec):
                from numcodecs import Blosc

                shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                           "bitshuffle": Blosc.BITSHUFFLE}[getattr(c.shuffle, "value", c.shuffle)]
                compress = Blosc(cname=getattr(c.cname, "value", c.cname), clevel=c.clevel,
                                 shuffle=shuffle, blocksize=c.blocksize, typesize=c.typesize).encode
            elif isinstance(c, ZstdCodec):
                from numcodecs import Zstd

                compress = Zstd(level=c.level, checksum=c.checksum).encode
            else:
                return None
        return cls(Path(arr.store.root) / arr.path, arr, compress, cache_chunks)

    def write(self, first: int, data: np.ndarray) -> None:
        """Write ``data`` (``(k, *arr.shape[1:])``) as the whole chunk along time that starts at
        step ``first`` (a multiple of the chunk length; ``k`` at most the chunk length, the rest
        of the chunk is the fill value, as zarr writes a chunk it creates)."""
        import google_crc32c

        k = self.chunks[0]
        if first % k or not 0 < len(data) <= k or tuple(data.shape[1:]) != self.chunks[1:]:
            raise ArchiveError(f"internal: block of {len(data)} steps at step {first} is not one whole "
                               f"chunk of {self.chunks}")
        if len(data) == k:
            raw = np.ascontiguousarray(data, dtype=self.dtype)
        else:
            raw = np.full(self.chunks, self.fill, dtype=self.dtype)
            raw[:len(data)] = data
        body = raw.reshape(-1).view(np.uint8)
        if self.encode is not None:
            body = np.frombuffer(self.encode(body), dtype=np.uint8)
        crc = np.uint32(google_crc32c.value(body)).astype("<u4").tobytes()
        path = self.folder / self.arr.metadata.encode_chunk_key((first // k,) + (0,) * (raw.ndim - 1))
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # as zarr's local store names it
        try:
            if not (self.direct and self._put_direct(tmp, body, crc)):
                self._put_buffered(tmp, body, crc)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not self.cache_chunks and not self.direct:
            if self._last is not None:
                self.drop(self._last)
            self._last = path

    def _put_buffered(self, tmp: Path, body: np.ndarray, crc: bytes) -> None:
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(crc)
            if not self.cache_chunks:
                f.flush()
                _drop_cached(f.fileno())  # starts the writeback; dirty pages stay

    def _put_direct(self, tmp: Path, body: np.ndarray, crc: bytes) -> bool:
        """``body + crc`` to the new file ``tmp`` with ``O_DIRECT``: the whole pages of an
        aligned ``body`` straight from its memory, the rest (all of an unaligned one) through the
        aligned scratch buffer, padded to a page; then the file is cut to its length. False,
        with nothing left behind and ``self.direct`` off, where the file system refuses it."""
        n = body.nbytes
        bulk = (n // ALIGN) * ALIGN if body.ctypes.data % ALIGN == 0 else 0
        rest = n - bulk + len(crc)
        padded = -(-rest // ALIGN) * ALIGN
        if self._scratch is None or self._scratch.nbytes < padded:
            self._scratch = aligned_empty(max(padded, 2 * ALIGN))
        tail = self._scratch[:padded]
        tail[:n - bulk] = body[bulk:]
        tail[n - bulk:rest] = np.frombuffer(crc, dtype=np.uint8)
        tail[rest:] = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, 0o666)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            return False
        try:
            for part in (memoryview(body)[:bulk], memoryview(tail)):
                done = 0
                while done < len(part):
                    done += os.write(fd, part[done:])
            os.ftruncate(fd, n + len(crc))
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp)
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False  # the file system took the flag but not the write
            return False
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return True

    @staticmethod
    def drop(path: Path) -> None:
        """Drop the clean cached pages of the file ``path`` (gone already: nothing to do)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            _drop_cached(fd)
        finally:
            os.close(fd)


def _drop_cached(fd: int) -> None:
    """``POSIX_FADV_DONTNEED`` on the whole file ``fd``: Linux starts writing back its dirty
    pages (without waiting) and drops the clean ones from the page cache."""
    if hasattr(os, "posix_fadvise"):  # not on macOS / Windows: the pages stay cached there
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
