"""Random-access reads of one zip entry's plaintext, with bounded memory.

The kernel asks for 128 KiB pieces, up to two at a time and sometimes slightly out of order,
while an ``mmap`` of a shared library jumps all over the file. Compressed streams can only be
decoded forwards, so an ``EntryReader`` picks one strategy per entry:

- stored entries (``direct``): ``os.pread`` on the archive at the data offset, nothing cached;
- entries up to ``SMALL_ENTRY`` bytes (``memory``): decoded completely on the first read and
  kept in memory until ``close``;
- larger entries (``stream``): ONE sequential decoder plus a rolling ``WINDOW`` of the most
  recent plaintext, so overlapping and slightly reordered reads never restart the decoder;
  short forward jumps decode and discard;
- once access is really random (a backward jump past the window, or a forward jump of more than
  ``FORWARD_SKIP_LIMIT``), the whole entry is decoded once into an unlinked temporary file in
  ``cache_dir`` (``file``) and every later read is an ``os.pread`` on it. If that file cannot
  be written (disk full, missing directory), the reader keeps streaming and restarts the decoder
  from the beginning for each backward jump: slow, but reads still succeed.

Memory per reader stays around ``WINDOW`` + two decode chunks (or ``SMALL_ENTRY``) whatever the
entry size, plus the decoder's own state; the compressed stream is fed to the decoder
``INPUT_CHUNK`` bytes at a time. Hostile input ("zip bombs") is bounded like this:

- no decoder is ever asked for more than the entry's declared ``file_size``; once that many bytes
  came out, the stream must end: if it would produce even one more byte, the read fails with EIO
  ("inflates past its declared size");
- Deflate64 has no output limit per call, so it gets ``_DEFLATE64_PIECE`` input bytes at a time
  (a crafted stream yields at most ~30000 bytes per input byte, so a few MiB per call);
- zstd (the ``zstandard`` package) is read through its bounded ``stream_reader``, with a window of
  at most zstd's own default limit, ``MAX_ZSTD_WINDOW``;
- LZMA's dictionary is never larger than the entry (it cannot be needed) and an entry that would
  need more than ``MAX_DICTIONARY`` fails with EIO instead of allocating it.

CRC-32 is checked whenever a decoder reaches the end of the entry (sequential pass, memory or
file). Stored entries are served straight from the archive with a running CRC over the bytes
read in order; a read that reaches the end of the entry checks the whole entry (reading what the
running CRC skipped), so a stored entry read to its end fails with EIO like a deflated one. Bytes
handed out before the end was reached are unverified, for every method.

Thread safety: one ``threading.Lock`` per reader serialises decoding; zlib, bz2, lzma and
``os.pread`` release the GIL, so readers of different entries decode in parallel. The archive
``fd`` is borrowed, never closed here.
"""

from __future__ import annotations

import bz2
import errno
import functools
import logging
import lzma
import os
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol

from . import deflate, zipspec
from .zipformat import (
    BZIP2,
    DEFLATE64,
    DEFLATED,
    FLAG_ENCRYPTED,
    LZMA,
    STORED,
    ZSTD,
    ZipEntry,
    ZipFormatError,
    local_data_offset,
)

log = logging.getLogger(__name__)

SMALL_ENTRY = 4 << 20  # entries up to this size are decoded into memory at once
WINDOW = 1 << 20  # recent plaintext kept by the sequential decoder
READ_AHEAD = 512 << 10  # a streamed read decodes this much further (at most half the window)
FORWARD_SKIP_LIMIT = 8 << 20  # farther forward jumps switch to the cache file
INPUT_CHUNK = 256 << 10  # compressed bytes per pread
OUTPUT_CHUNK = 256 << 10  # plaintext bytes per decoder call
AHEAD_LIMIT = 4 << 20  # stored entries: out-of-order bytes kept for the running CRC
_DEFLATE64_PIECE = 128  # input per call for Deflate64, which has no output limit
MAX_DICTIONARY = 64 << 20  # LZMA dictionary limit (what 7-Zip's strongest preset uses)
MAX_ZSTD_WINDOW = 128 << 20  # zstd window limit (the zstd tool's default)
_LZMA_DICT_MIN = 4096
_MAX_STALLS = 1000  # decoder calls in a row that neither consume nor produce anything

# Error-boundary tests: reads of the entry with this exact name raise RuntimeError, so a test
# can check from outside that an unexpected exception fails one FUSE request, not the mount.
_TEST_FAULT_ENTRY = os.environ.get("ZIPFUSE_TEST_READ_FAULT")

_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    *deflate.ERRORS,
    lzma.LZMAError,
    EOFError,
    OSError,  # bz2 reports "Invalid data stream" as OSError
    ValueError,
    RuntimeError,
)


class EntryReadError(OSError):
    """Reading an entry failed; ``errno`` says how (EIO, EACCES, EOPNOTSUPP, ...)."""


class _Codec(Protocol):
    """A streaming decoder: ``feed`` only when ``wants_input``; ``pull`` returns some output."""

    wants_input: bool
    eof: bool

    def feed(self, data: bytes) -> None: ...

    def pull(self, max_length: int) -> bytes: ...


class _ZlibCodec:
    """Raw deflate; zlib keeps input it could not use yet in ``unconsumed_tail``."""

    def __init__(self) -> None:
        self._d = deflate.decompressobj()
        self._tail = b""
        self.wants_input = True
        self.eof = False

    def feed(self, data: bytes) -> None:
        self._tail += data

    def pull(self, max_length: int) -> bytes:
        out = self._d.decompress(self._tail, max_length)
        self._tail = self._d.unconsumed_tail
        self.eof = self._d.eof
        self.wants_input = not self.eof and not self._tail and len(out) < max_length
        return out


class _BufferedCodec:
    """Decoders with the bz2/lzma interface (internal input buffer, ``needs_input``)."""

    def __init__(self, decoder: Any) -> None:
        self._d = decoder
        self._in = b""
        self.wants_input = True
        self.eof = False

    def feed(self, data: bytes) -> None:
        self._in = data

    def pull(self, max_length: int) -> bytes:
        out: bytes = self._d.decompress(self._in, max_length)
        self._in = b""
        self.eof = self._d.eof
        self.wants_input = not self.eof and self._d.needs_input
        return out


class _ChunkedCodec:
    """Decoders without an output limit: give them small input pieces to bound each result.

    ``pull`` may return more than ``max_length``; the caller treats that as an overflow.
    """

    def __init__(self, decoder: Any, piece: int) -> None:
        self._d = decoder
        self._piece = piece
        self._in = b""
        self._pos = 0
        self.wants_input = True
        self.eof = False

    def feed(self, data: bytes) -> None:
        self._in, self._pos = data, 0

    def pull(self, max_length: int) -> bytes:
        out = b""
        while self._pos < len(self._in) and not out and not self.eof:
            piece = self._in[self._pos : self._pos + self._piece]
            self._pos += len(piece)
            out = self._d.decompress(piece)
            self.eof = bool(getattr(self._d, "eof", False))
        self.wants_input = not self.eof and self._pos >= len(self._in)
        return out


class _PullCodec:
    """A ``zstandard`` stream reader: it fetches its own input and never returns more than asked."""

    def __init__(self, make_reader: Callable[[Any], Any], fetch: Callable[[int], bytes]) -> None:
        self._reader = make_reader(_Source(fetch))
        self.wants_input = False  # input comes through ``fetch``
        self.eof = False

    def feed(self, data: bytes) -> None:  # pragma: no cover - wants_input is never set
        raise AssertionError("_PullCodec reads its own input")

    def pull(self, max_length: int) -> bytes:
        out: bytes = self._reader.read(max_length)
        if not out:
            self.eof = True
        return out


class _Source:
    """File-like object over the compressed bytes, for decoders that pull their input."""

    def __init__(self, fetch: Callable[[int], bytes]) -> None:
        self.read = fetch


class _ZipLzmaCodec:
    """LZMA as stored in zip (APPNOTE 5.8.8): version (2 bytes), properties size (2 bytes,
    little-endian), the LZMA1 properties (lc/lp/pb byte + 4-byte dictionary size), then a raw
    LZMA1 stream."""

    def __init__(self, file_size: int) -> None:
        self._file_size = file_size
        self._header = b""
        self._inner: _BufferedCodec | None = None
        self.wants_input = True
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.feed(data)
            return
        self._header += data
        if len(self._header) < 4:
            return
        (psize,) = struct.unpack_from("<H", self._header, 2)
        if len(self._header) < 4 + psize:
            return
        props = self._header[4 : 4 + psize]
        if psize < 5 or props[0] >= 9 * 5 * 5:
            raise lzma.LZMAError("invalid LZMA properties in zip header")
        lc, rest = props[0] % 9, props[0] // 9
        (dict_size,) = struct.unpack_from("<L", props, 1)
        # Distances never reach back past the start of the entry, so a dictionary larger than
        # the entry is never used; liblzma would still reserve (and a bomb fill) all of it.
        dict_size = max(_LZMA_DICT_MIN, min(dict_size, self._file_size))
        if dict_size > MAX_DICTIONARY:
            raise lzma.LZMAError(
                f"LZMA dictionary of {dict_size >> 20} MiB is larger than the "
                f"{MAX_DICTIONARY >> 20} MiB limit"
            )
        filt = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc}
        filt.update(lp=rest % 5, pb=rest // 5)
        self._inner = _BufferedCodec(lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[filt]))
        self._inner.feed(self._header[4 + psize :])
        self._header = b""

    def pull(self, max_length: int) -> bytes:
        if self._inner is None:
            self.wants_input = True
            return b""
        out = self._inner.pull(max_length)
        self.wants_input, self.eof = self._inner.wants_input, self._inner.eof
        return out


@functools.cache
def _deflate64_factory() -> Callable[[], Any] | None:
    try:
        # Importing the package also teaches the stdlib zipfile about method 9 (harmless).
        from zipfile_deflate64 import deflate64  # type: ignore[import-untyped]
    except ImportError:
        return None
    return deflate64.Deflate64  # type: ignore[no-any-return]


@functools.cache
def _zstd_codec_factory() -> Callable[[Callable[[int], bytes]], _Codec] | None:
    """Make a zstd codec from a ``fetch(n) -> bytes`` of compressed input."""
    global _CORRUPT_ERRORS
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14

        _CORRUPT_ERRORS += (zstd.ZstdError,)
        # zstd's default window limit (2**27) applies; output is bounded by max_length
        return lambda fetch: _BufferedCodec(zstd.ZstdDecompressor())
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        return None
    _CORRUPT_ERRORS += (zstandard.ZstdError,)

    def make(fetch: Callable[[int], bytes]) -> _Codec:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        return _PullCodec(
            lambda source: dctx.stream_reader(
                source, read_size=INPUT_CHUNK, read_across_frames=True
            ),
            fetch,
        )

    return make


def supported_method(method: int) -> bool:
    """Whether entries compressed with ``method`` can be read here."""
    if method in (STORED, DEFLATED, BZIP2, LZMA):
        return True
    if method == DEFLATE64:
        return _deflate64_factory() is not None
    if method == ZSTD:
        return _zstd_codec_factory() is not None
    return False


def _make_codec(entry: ZipEntry, fetch: Callable[[int], bytes]) -> _Codec:
    method = entry.method
    if method == DEFLATED:
        return _ZlibCodec()
    if method == BZIP2:
        return _BufferedCodec(bz2.BZ2Decompressor())
    if method == LZMA:
        return _ZipLzmaCodec(entry.file_size)
    if method == DEFLATE64:
        d64 = _deflate64_factory()
        assert d64 is not None
        return _ChunkedCodec(d64(), _DEFLATE64_PIECE)
    zstd = _zstd_codec_factory()
    assert method == ZSTD and zstd is not None
    return zstd(fetch)


class _Stream:
    """One forward pass over an entry's plaintext in bounded chunks, CRC-checked at the end.

    Never hands out more than the declared ``file_size``; when that much has come out, the
    stream must be over (see ``_check_end``).
    """

    def __init__(self, fd: int, entry: ZipEntry, data_offset: int) -> None:
        self._fd = fd
        self._entry = entry
        self._data_offset = data_offset
        self._in_pos = 0
        self._crc = 0
        self.pos = 0  # plaintext bytes produced so far
        self._codec = _make_codec(entry, self._fetch)

    def _fail(self, what: str) -> EntryReadError:
        return EntryReadError(errno.EIO, f"{self._entry.name}: corrupt data: {what}")

    def _pull(self, max_length: int) -> bytes:
        try:
            return self._codec.pull(max_length)
        except EntryReadError:
            raise
        except _CORRUPT_ERRORS as exc:
            raise self._fail(str(exc) or type(exc).__name__) from exc

    def next_chunk(self) -> bytes:
        """The next piece of plaintext (at most ``OUTPUT_CHUNK`` bytes), b"" at the end."""
        entry = self._entry
        remaining = entry.file_size - self.pos
        if remaining <= 0:
            return b""
        stalls = 0
        while True:
            if self._codec.eof:
                raise self._fail(f"stream ends after {self.pos} of {entry.file_size} bytes")
            if self._codec.wants_input:
                self._feed()
            out = self._pull(min(OUTPUT_CHUNK, remaining))
            if out:
                break
            stalls = 0 if self._codec.wants_input else stalls + 1
            if stalls > _MAX_STALLS:
                raise self._fail("decoder makes no progress")
        if len(out) > remaining:  # only decoders without an output limit can get here
            raise self._overflow()
        self._crc = deflate.crc32(out, self._crc)
        self.pos += len(out)
        if self.pos == entry.file_size:
            self._check_end()
            if self._crc != entry.crc:
                raise EntryReadError(errno.EIO, f"{entry.name}: CRC mismatch")
        return out

    def _overflow(self) -> EntryReadError:
        return self._fail(f"data inflates past its declared size of {self._entry.file_size} bytes")

    def _check_end(self) -> None:
        """The declared size is reached: the stream may not yield a single byte more.

        Costs at most one more pass over the remaining compressed bytes (usually a few bytes:
        the end-of-stream marker). Running out of compressed input without an end marker is
        accepted (LZMA without EOS marker does exactly that); the CRC still has the last word.
        """
        stalls = 0
        while not self._codec.eof:
            if self._codec.wants_input:
                if self._in_pos >= self._entry.compressed_size:
                    return
                self._feed()
            if self._pull(1):
                raise self._overflow()
            stalls = 0 if self._codec.wants_input else stalls + 1
            if stalls > _MAX_STALLS:
                raise self._fail("decoder makes no progress")

    def _fetch(self, size: int) -> bytes:
        """Up to ``size`` further compressed bytes; b"" once all of them were read."""
        left = self._entry.compressed_size - self._in_pos
        if left <= 0:
            return b""
        offset = self._data_offset + self._in_pos
        try:
            data = os.pread(self._fd, min(size, INPUT_CHUNK, left), offset)
        except OSError as exc:
            raise EntryReadError(exc.errno or errno.EIO, f"{self._entry.name}: {exc}") from exc
        if not data:
            raise self._fail("archive is truncated")
        self._in_pos += len(data)
        return data

    def _feed(self) -> None:
        data = self._fetch(INPUT_CHUNK)
        if not data:
            raise self._fail(f"compressed data ends after {self.pos} bytes of plaintext")
        try:
            self._codec.feed(data)
        except _CORRUPT_ERRORS as exc:
            raise self._fail(str(exc) or type(exc).__name__) from exc


def read_whole(fd: int, entry: ZipEntry) -> bytes | None:
    """The whole plaintext of a stored or deflated entry, CRC-checked, with ONE pread (local
    header and data together) and no reader state: what the first READ of a small file needs.

    Returns None whenever the general path (``EntryReader``) is needed to decide: another
    method, an encrypted entry, a local header larger than guessed, a short read, a stream
    that does not end where its declared size says. Raises ``EntryReadError`` (EIO) for data
    that is certainly corrupt: a bad deflate stream, one that ends early, a CRC mismatch.
    Meant for entries of a few hundred KiB at most (the caller decides).
    """
    method = entry.method
    if (method != DEFLATED and method != STORED) or entry.flags & FLAG_ENCRYPTED:
        return None
    csize, usize = entry.compressed_size, entry.file_size
    if (
        _TEST_FAULT_ENTRY is not None
        or usize <= 0  # zlib reads max_length 0 as "no limit"
        or csize > usize + (usize >> 8) + 1024  # more than deflate can need: the careful path
        or (method == STORED and csize != usize)
    ):
        return None
    # local header + name + local extra (Info-ZIP's is a few bytes longer than the central)
    guess = zipspec.LOCAL_HEADER.size + len(entry.raw_name or entry.name) + len(entry.extra) + 64
    try:
        buf = os.pread(fd, guess + csize, entry.header_offset)
    except OSError as exc:
        raise EntryReadError(exc.errno or errno.EIO, f"{entry.name}: {exc}") from exc
    if len(buf) < zipspec.LOCAL_HEADER.size or not buf.startswith(zipspec.LOCAL_SIG):
        return None
    fields = zipspec.LOCAL_HEADER.unpack_from(buf)
    start = zipspec.LOCAL_HEADER.size + fields[9] + fields[10]
    if start + csize > len(buf):
        return None
    if method == STORED:
        out = buf[start : start + csize]
    else:
        d = deflate.decompressobj()
        try:
            out = d.decompress(memoryview(buf)[start : start + csize], usize)
        except deflate.ERRORS as exc:
            raise EntryReadError(errno.EIO, f"{entry.name}: corrupt data: {exc}") from exc
        if len(out) < usize:
            what = (
                f"stream ends after {len(out)} of {usize} bytes"
                if d.eof
                else f"compressed data ends after {len(out)} bytes of plaintext"
            )
            raise EntryReadError(errno.EIO, f"{entry.name}: corrupt data: {what}")
        if not d.eof:
            return None  # is there more? the general path checks that carefully
    if deflate.crc32(out) != entry.crc:
        raise EntryReadError(errno.EIO, f"{entry.name}: CRC mismatch")
    return out


class EntryReader:
    """Thread-safe random-access reads of one entry's plaintext with bounded memory."""

    def __init__(
        self, fd: int, entry: ZipEntry, cache_dir: str, archive_size: int | None = None
    ) -> None:
        """``archive_size``: the size of the archive version ``fd`` holds (bounds the entry's
        data without an fstat per open; None: one fstat when the data is first located)."""
        self._fd = fd
        self._entry = entry
        self._archive_size = archive_size
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._data_offset: int | None = None
        self._error: EntryReadError | None = None
        self._closed = False
        self._memory: bytes | None = None
        self._stream: _Stream | None = None
        self._window = bytearray()  # plaintext [stream.pos - len(window), stream.pos)
        self._cache: IO[bytes] | None = None
        self._crc = 0  # stored entries: CRC of plaintext [0, _crc_pos), read in order
        self._crc_pos = 0
        self._crc_checked = False
        self._ahead: dict[int, bytes] = {}  # stored: pieces read past _crc_pos (out of order)

    @property
    def entry(self) -> ZipEntry:
        return self._entry

    @property
    def strategy(self) -> str:
        """How reads are currently served: direct, memory, stream, file, or idle."""
        if self._entry.method == STORED:
            return "direct"
        if self._cache is not None:
            return "file"
        if self._memory is not None:
            return "memory"
        return "stream" if self._stream is not None else "idle"

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short or empty at the end). Blocks."""
        if offset < 0 or size < 0:
            raise EntryReadError(errno.EINVAL, f"{self._entry.name}: negative offset or size")
        if _TEST_FAULT_ENTRY is not None and self._entry.name == _TEST_FAULT_ENTRY:
            raise RuntimeError("injected fault (ZIPFUSE_TEST_READ_FAULT)")
        end = min(offset + size, self._entry.file_size)
        with self._lock:
            self._check()
            if offset >= end:
                return b""
            if self._entry.method != STORED:
                return self._read_decoded(offset, end)
            data_offset = self._get_data_offset()
        data = self._pread(self._fd, end - offset, data_offset + offset)
        if not self._crc_checked:
            with self._lock:
                self._check()
                self._stored_crc(offset, data, complete=True)
        return data

    def read_ready(self, offset: int, size: int) -> bytes | None:
        """The bytes if they can be had without decoding (already decoded, cached or stored),
        else None. Never blocks on another reader: the event loop calls this inline and only
        sends real decoding work to a thread."""
        if _TEST_FAULT_ENTRY is not None or offset < 0 or size < 0:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed or self._error is not None:
                return None
            end = min(offset + size, self._entry.file_size)
            if offset >= end:
                return b""
            if self._entry.method == STORED:
                return None if self._data_offset is None else self._read_decoded_stored(offset, end)
            if self._memory is not None:
                return self._memory[offset:end]
            if self._cache is not None:
                return self._pread(self._cache.fileno(), end - offset, offset)
            stream = self._stream
            if stream is not None:
                win_start = stream.pos - len(self._window)
                if win_start <= offset and end <= stream.pos:
                    return bytes(self._window[offset - win_start : end - win_start])
            return None
        except EntryReadError:
            return None
        finally:
            self._lock.release()

    def _read_decoded_stored(self, offset: int, end: int) -> bytes | None:
        assert self._data_offset is not None
        data = self._pread(self._fd, end - offset, self._data_offset + offset)
        if not self._crc_checked and not self._stored_crc(offset, data, complete=False):
            return None  # the whole-entry check needs a read pass: not on the event loop
        return data

    def _extend_crc(self, offset: int, data: bytes) -> None:
        if offset <= self._crc_pos < offset + len(data):
            self._crc = deflate.crc32(memoryview(data)[self._crc_pos - offset :], self._crc)
            self._crc_pos = offset + len(data)

    def _stored_crc(self, offset: int, data: bytes, *, complete: bool) -> bool:
        """Extend the running CRC of a stored entry by ``data`` read at ``offset``; once a read
        reaches the end, check the whole entry. Returns False (``complete`` False) when that
        check would need to read the bytes the running CRC skipped. Caller holds the lock."""
        if self._crc_checked:
            return True
        entry = self._entry
        if offset > self._crc_pos:
            # the kernel sends readahead slightly out of order: keep a few pieces for later
            if sum(map(len, self._ahead.values())) + len(data) <= AHEAD_LIMIT:
                self._ahead[offset] = data
        else:
            self._extend_crc(offset, data)
            while self._ahead:
                start = min(self._ahead)
                if start > self._crc_pos:
                    break
                self._extend_crc(start, self._ahead.pop(start))
        if offset + len(data) < entry.file_size:
            return True
        self._ahead.clear()
        if self._crc_pos < entry.file_size:
            if not complete:
                return False
            assert self._data_offset is not None
            while self._crc_pos < entry.file_size:
                size = min(OUTPUT_CHUNK, entry.file_size - self._crc_pos)
                chunk = self._pread(self._fd, size, self._data_offset + self._crc_pos)
                if not chunk:
                    break
                self._crc = deflate.crc32(chunk, self._crc)
                self._crc_pos += len(chunk)
        if self._crc_pos != entry.file_size or self._crc != entry.crc:
            self._error = EntryReadError(errno.EIO, f"{entry.name}: CRC mismatch")
            raise self._error
        self._crc_checked = True
        return True

    def close(self) -> None:
        """Drop cached plaintext and the cache file; later reads fail with EBADF."""
        with self._lock:
            self._closed = True
            self._drop_state()
            self._ahead.clear()

    def _check(self) -> None:
        """Raise why this entry cannot be read (checked at read time so listing still works)."""
        entry = self._entry
        if self._closed:
            raise EntryReadError(errno.EBADF, f"{entry.name}: reader is closed")
        if self._error is not None:
            raise self._error
        if entry.encrypted:
            raise EntryReadError(errno.EACCES, f"{entry.name}: entry is encrypted")
        if not supported_method(entry.method):
            raise EntryReadError(
                errno.EOPNOTSUPP, f"{entry.name}: compression method {entry.method} not supported"
            )
        if entry.method == STORED and entry.file_size != entry.compressed_size:
            # Reading on would hand out bytes of the next entry (or of the directory).
            raise EntryReadError(errno.EIO, f"{entry.name}: corrupt data: stored sizes disagree")

    def _get_data_offset(self) -> int:
        if self._data_offset is None:
            try:
                self._data_offset = local_data_offset(self._fd, self._entry, self._archive_size)
            except ZipFormatError as exc:
                self._error = EntryReadError(errno.EIO, f"{self._entry.name}: {exc}")
                raise self._error from exc
        return self._data_offset

    def _pread(self, fd: int, size: int, offset: int) -> bytes:
        try:
            return os.pread(fd, size, offset)
        except OSError as exc:
            raise EntryReadError(exc.errno or errno.EIO, f"{self._entry.name}: {exc}") from exc

    def _new_stream(self) -> _Stream:
        return _Stream(self._fd, self._entry, self._get_data_offset())

    def _drop_state(self) -> None:
        self._memory = None
        self._stream = None
        self._window = bytearray()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def _read_decoded(self, offset: int, end: int) -> bytes:
        try:
            if self._cache is not None:
                return self._pread(self._cache.fileno(), end - offset, offset)
            if self._memory is not None:
                return self._memory[offset:end]
            if self._entry.file_size <= SMALL_ENTRY:
                self._memory = self._decode_to_memory()
                return self._memory[offset:end]
            if self._stream is None:
                self._stream = self._new_stream()
            pos = self._stream.pos
            if offset < pos - len(self._window) or offset > pos + FORWARD_SKIP_LIMIT:
                try:
                    self._decode_to_file()
                except EntryReadError as exc:
                    if exc.errno == errno.EIO:
                        raise
                    # No room (or no permission) for the cache file: still answer, slowly,
                    # by decoding again from the start.
                    log.warning("%s; decoding from the start instead", exc)
                    self._stream = self._new_stream()
                    return self._read_streaming(offset, end)
                assert self._cache is not None
                return self._pread(self._cache.fileno(), end - offset, offset)
            return self._read_streaming(offset, end)
        except EntryReadError as exc:
            if exc.errno == errno.EIO:  # corrupt data stays corrupt: fail fast from now on
                self._error = exc
                self._drop_state()
            raise

    def _decode_to_memory(self) -> bytes:
        stream = self._new_stream()
        parts = []
        while chunk := stream.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def _decode_to_file(self) -> None:
        """Decode the whole entry once into an unlinked temporary file."""
        self._stream = None
        self._window = bytearray()
        stream = self._new_stream()
        try:
            cache = tempfile.TemporaryFile(dir=self._cache_dir)  # noqa: SIM115 (kept open)
        except OSError as exc:
            raise EntryReadError(exc.errno or errno.EIO, f"cache file: {exc.strerror}") from exc
        try:
            while chunk := stream.next_chunk():
                cache.write(chunk)
            cache.flush()
        except OSError as exc:
            cache.close()
            if isinstance(exc, EntryReadError):
                raise
            raise EntryReadError(exc.errno or errno.EIO, f"cache file: {exc.strerror}") from exc
        self._cache = cache

    def _read_streaming(self, offset: int, end: int) -> bytes:
        """Serve [offset, end) from the window and by decoding forwards."""
        stream = self._stream
        assert stream is not None
        window = self._window
        win_start = stream.pos - len(window)
        out = bytearray(
            window[offset - win_start : end - win_start] if offset < stream.pos else b""
        )
        # Decode a little past the request: the kernel's next sequential READs are then
        # answered from the window on the event loop (``read_ready``), not on a thread.
        want = min(end + min(READ_AHEAD, WINDOW // 2), self._entry.file_size)
        while stream.pos < want:
            chunk_start = stream.pos
            chunk = stream.next_chunk()
            if not chunk:
                break
            lo, hi = max(offset, chunk_start), min(end, stream.pos)
            if lo < hi:
                out += chunk[lo - chunk_start : hi - chunk_start]
            window += chunk
            if len(window) > WINDOW:
                del window[: len(window) - WINDOW]
        return bytes(out)
