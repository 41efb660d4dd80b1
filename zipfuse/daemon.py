"""The mount daemon: mount, serve FUSE and control requests, commit, exit.

It starts from what ``launch.prepare`` made (archive opened and parsed, mountpoint checked);
``launch`` forks it and waits until it reports that the mount is up or why it is not.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import gc
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import pyfuse3
import trio

from . import (
    control,
    controlserver,
    indexcache,
    journal,
    oldversions,
    osutil,
    pyfuse3_caps,
    registry,
)
from .errors import ZipfuseError
from .journal import Journal
from .launch import Config, Prepared, no_gc
from .lock import LockLost
from .namespace import Namespace
from .ops import ZipOperations
from .overlay import Committed, Overlay
from .spill import SpillArea

if TYPE_CHECKING:
    from .lock import ArchiveLock

log = logging.getLogger("zipfuse")

# gc generation thresholds while serving: young collections every 50,000 allocations
GC_THRESHOLDS = (50_000, 20, 10)
# seconds between background flushes of the spill area and journal (0: only on fsync)
FLUSH_INTERVAL = float(os.environ.get("ZIPFUSE_FLUSH_INTERVAL", "3"))


def run_foreground(prepared: Prepared) -> int:
    return _daemon_main(prepared, None)


def _setup_logging(config: Config, path: str | None) -> None:
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _daemon_main(prepared: Prepared, status_fd: int | None) -> int:
    """Mount, serve until unmounted, commit. Returns the process exit code."""
    config = prepared.config
    pid = os.getpid()
    logfile = registry.log_path(pid)
    _setup_logging(config, None if status_fd is None else logfile)
    logf = open(logfile, "a")  # noqa: SIM115 - lives as long as the process
    faulthandler.enable(logf)
    faulthandler.register(signal.SIGUSR1, logf)

    def report(msg: str) -> None:
        if status_fd is not None:
            os.write(status_fd, msg.encode() + b"\n")
        elif msg != "ok":
            print(f"zipfuse: {msg}", file=sys.stderr)

    _raise_fd_limit()
    daemon = Daemon(prepared, logfile)
    try:
        daemon.mount()
    except ZipfuseError as exc:
        report(str(exc))
        return 1
    except Exception as exc:
        log.exception("mount failed")
        report(f"mount failed: {exc}")
        return 1
    if status_fd is not None:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    report("ok")
    if status_fd is not None:
        os.close(status_fd)
    daemon.save_index()
    try:
        return daemon.run()
    finally:
        registry.unregister(pid)
        oldversions.collect(config.archive)  # our versions are closed: theirs may go
        log.info("daemon exits; peak memory (VmHWM) %s", _peak_memory())


class Daemon:
    """State of one mount process."""

    def __init__(self, prepared: Prepared, logfile: str) -> None:
        self.config = prepared.config
        self.prepared = prepared
        self.logfile = logfile
        self.state = "mounting"
        self.progress: dict | None = None
        self.watchers: list[control.Send] = []
        self.final: dict | None = None
        self.final_event: trio.Event | None = None
        self.discard = False  # unmount --discard: drop uncommitted changes
        self._failures_seen = 0  # failed writes already reported by a sync

    # ---------------------------------------------------------------------- mount
    def mount(self) -> None:
        cfg = self.config
        prepared = self.prepared
        now = time.time_ns()
        self.lock: ArchiveLock | None = None
        self.journal: Journal | None = None
        if not cfg.read_only:
            from .lock import ArchiveLock

            self.lock = ArchiveLock(cfg.archive)
            self.lock.acquire()
        try:
            spill = SpillArea(cfg.spill_dir, cfg.archive, cache_only=cfg.read_only)
        except OSError as exc:
            where = exc.filename or cfg.spill_dir or "the default spill directory"
            raise ZipfuseError(
                f"cannot use spill directory {where}: {exc.strerror or exc}"
            ) from None
        self.spill = spill
        base = journal.fingerprint(cfg.archive)
        records: list[dict] = []
        if not cfg.read_only:
            state = journal.read_state(spill.path)
            name = journal.JOURNAL
            if cfg.restore and state is not None and state.get("base") == base:
                name = journal.current_name(spill.path, state)
                records = journal.read_records(spill.path, name)
            self.journal = Journal(spill.path, cfg.archive, name)
            self.journal.start(base, fresh=not records)
        with no_gc():
            self.ns = self._tree(now)
            if records:
                applied = journal.replay(self.ns, records, spill.path)
                self.ns.changes = max(1, applied)
                log.info("restored %d journal records of an interrupted session", applied)
        gc.freeze()  # the index lives as long as the mount: keep it out of every later gc pass
        # Listing directories makes the rest of the index (a node and an entry per name) while
        # requests run; at the default thresholds the cyclic gc then ran every 700 allocations
        # and re-scanned the growing index (13% of the daemon's time in a cold walk).
        gc.set_threshold(*GC_THRESHOLDS)
        osutil.release_free_memory()
        kernel_cache = pyfuse3_caps.kernel_cache_enabled()
        self.overlay = Overlay(
            self.ns,
            spill,
            archive=cfg.archive,
            archive_fd=prepared.archive_fd,
            cd=prepared.cd,
            read_only=cfg.read_only,
            journal=self.journal,
            base=base,
            level=cfg.level,
        )
        self.ops = ZipOperations(self.overlay, kernel_cache=kernel_cache)
        options = set(pyfuse3.default_options)
        options.add(f"fsname={cfg.archive}")
        options.add("subtype=zipfuse")
        if cfg.read_only:
            options.add("ro")
        options.update(cfg.fuse_options)
        options.discard("")
        try:
            pyfuse3.init(self.ops, cfg.mountpoint, options)
        except RuntimeError as exc:
            raise ZipfuseError(f"cannot mount on {cfg.mountpoint}: {exc}") from None
        pid = os.getpid()
        registry.register(
            {
                "pid": pid,
                "start_time": registry.process_start_time(pid),
                "archive": cfg.archive,
                "mountpoint": cfg.mountpoint,
                "read_only": cfg.read_only,
                "socket": registry.socket_path(pid),
                "spill_dir": None if cfg.read_only else spill.path,
                "log": self.logfile,
                "started": time.time(),
            }
        )
        self.state = "mounted"
        log.info(
            "mounted %s on %s (%d inodes, kernel cache %s, request loop %s)",
            cfg.archive,
            cfg.mountpoint,
            self.ns.count(),
            "on" if kernel_cache else "off",
            "inline" if pyfuse3_caps.pyfuse3_has_inline_requests() else "stock",
        )

    def _tree(self, now: int) -> Namespace:
        """The tree of the archive: from its index when ``prepare`` found a matching one;
        else built here, and its state kept for ``save_index`` (before anything is listed)."""
        prepared, uid, gid = self.prepared, os.getuid(), os.getgid()
        self._index: tuple | None = None
        if prepared.tree is not None:
            try:
                return Namespace.from_archive(prepared.cd, uid, gid, now, prepared.tree)
            except ValueError as exc:  # an index that does not fit: build the tree anew
                log.warning("archive index not used: %s", exc)
        ns = Namespace.from_archive(prepared.cd, uid, gid, now)
        if prepared.index_path is not None and prepared.index_key is not None:
            self._index = (prepared.index_path, prepared.index_key, ns.index_state())
        return ns

    def save_index(self) -> None:
        """Store the index built at mount for the next mount (after the mount answers)."""
        if self._index is not None and self.prepared.cd is not None:
            path, key, state = self._index
            self._index = None
            indexcache.save(path, key, self.prepared.cd, state)

    # ---------------------------------------------------------------------- serve
    def run(self) -> int:
        profile_path = os.environ.get("ZIPFUSE_PROFILE")  # developer aid: cProfile the daemon
        try:
            if profile_path:
                import cProfile

                with cProfile.Profile() as prof:
                    code = trio.run(self._main)
                prof.dump_stats(profile_path)
            else:
                code = trio.run(self._main)
        except BaseException:
            log.exception("daemon failed")
            try:
                pyfuse3.close(unmount=False)
            except Exception:
                pass
            return 1
        return code

    async def _main(self) -> int:
        self.final_event = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                controlserver.serve, registry.socket_path(os.getpid()), self._handle_request
            )
            nursery.start_soon(self._signals)
            if self.journal is not None:
                nursery.start_soon(self.overlay.guarded, "background flush", self._flush_loop)
            await pyfuse3.main(**_main_args())
            pyfuse3.close(unmount=True)
            self.state = "committing"
            result = await self._final_commit()
            self.final = result
            self.final_event.set()
            # let watchers receive the result, then stop serving
            with trio.move_on_after(5):
                while self.watchers:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return 0 if self.final and self.final.get("ok") else 2

    async def _flush_loop(self) -> None:
        """Make closed files and journal records durable within a few seconds (like ext4)."""
        while FLUSH_INTERVAL > 0:
            await trio.sleep(FLUSH_INTERVAL)
            if self.state == "mounted":
                try:
                    await self.overlay.flush()
                except OSError as exc:
                    log.error("background flush of the spill area failed: %s", exc)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    continue
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def _handle_request(self, request: dict, send: control.Send) -> dict:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "sync":
            if self.state != "mounted":
                return {"ok": False, "error": f"cannot sync: mount is {self.state}"}
            return await self.commit(send, flush=True)
        if op == "compact":  # a full rewrite, even with nothing to commit
            if self.state != "mounted":
                return {"ok": False, "error": f"cannot compact: mount is {self.state}"}
            self.overlay.force_rewrite = True
            return await self.commit(send, flush=True)
        if op == "watch":
            if request.get("discard"):
                self.discard = True
                log.warning("unmount with --discard: uncommitted changes will be dropped")
            await send({"watching": True})
            self.watchers.append(send)
            assert self.final_event is not None  # set before requests are served
            try:
                await self.final_event.wait()
            finally:
                self.watchers.remove(send)
            return self.final or {"ok": False, "error": "the daemon ended without a result"}
        return {"ok": False, "error": f"unknown control op {op!r}"}

    def status(self) -> dict:
        data = self.overlay.data
        return {
            "state": self.state,
            "dirty_bytes": data.dirty_bytes(),
            "dirty_files": len(data.dirty),
            "inodes": self.ns.count(),
            "progress": self.progress,
            "failed": self.overlay.failed,
        }

    # ---------------------------------------------------------------------- commit
    async def _final_commit(self) -> dict:
        if self.discard or not self.overlay.needs_commit():
            await self.overlay.close(destroy_spill=True)
            self._release_lock()
            message = "changes discarded" if self.discard else "nothing to commit"
            return {"ok": True, "committed": False, "message": message}
        result = await self.commit(self._broadcast, flush=False, final=True)
        if result.get("ok"):
            await self.overlay.close(destroy_spill=True)
            self._release_lock()
        else:
            with contextlib.suppress(OSError):
                await self.overlay.flush()
            if not result.get("lock_lost"):  # that message says what to do already
                result["error"] += (
                    f"; your changes are kept in {self.spill.path}: "
                    f"run 'zipfuse recover {self.config.archive}' to retry"
                )
        return result

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    async def _broadcast(self, msg: dict) -> None:
        for send in list(self.watchers):
            try:
                await send(msg)
            except Exception:
                pass

    async def commit(self, send: control.Send, *, flush: bool, final: bool = False) -> dict:
        """Write the new archive; writers wait while it runs, readers go on. ``final``: the
        one after the unmount, whose archive nothing reads through this process."""
        from . import commit  # imported on first use: a read-only mount never needs it

        data = self.overlay.data
        if flush:  # push the kernel's cached dirty pages (mmap) to us first
            try:
                await trio.to_thread.run_sync(osutil.syncfs, self.config.mountpoint)
            except OSError as exc:  # pages that could not be stored: the spill is where
                log.error("flushing written data into the spill directory failed: %s", exc)
                if not data.write_failures:
                    why = _oserror(OSError(exc.errno, exc.strerror))
                    return {"ok": False, "error": f"cannot store written data in the spill "
                            f"directory {self.spill.path}: {why}"}  # fmt: skip
        if data.write_failures != self._failures_seen:  # say it once, at the next commit:
            self._failures_seen = data.write_failures  # what the archive gets is incomplete
            why = _oserror(OSError(data.write_errno, os.strerror(data.write_errno)))
            return {"ok": False, "error": f"cannot store written data in the spill "
                    f"directory {self.spill.path}: {why}"}  # fmt: skip
        previous = self.state

        def begin(entries: int, nbytes: int) -> None:
            self.state = "committing"
            self.progress = {
                "entries_done": 0,
                "entries_total": entries,
                "bytes_done": 0,
                "bytes_total": nbytes,
            }

        def progress(entries: int, nbytes: int) -> None:  # on the commit thread
            if self.progress is not None:
                self.progress = {**self.progress, "entries_done": entries, "bytes_done": nbytes}

        async def pump() -> None:
            while True:
                await trio.sleep(0.25)
                try:
                    await send({"progress": self.progress})
                except Exception:  # the client went away; the commit goes on
                    return

        async def run() -> Committed | None | Exception:
            try:
                return await self.overlay.commit(begin, progress, adopt=not final)
            except Exception as exc:  # raised below, not wrapped in the nursery's group
                return exc

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                done = await run()
                nursery.cancel_scope.cancel()
            if isinstance(done, Exception):
                raise done
            if done is None:
                return {"ok": True, "committed": False, "message": "nothing to commit"}
            await trio.to_thread.run_sync(oldversions.collect, self.config.archive)
            with contextlib.suppress(Exception):  # the last record: done == total
                await send({"progress": self.progress})
            log.info(
                "committed %d entries, %d bytes in %.2f s",
                done.entries,
                done.archive_size,
                done.seconds,
            )
            return {
                "ok": True,
                "committed": True,
                "entries": done.entries,
                "archive_size": done.archive_size,
                "seconds": done.seconds,
                "how": done.how,
            }
        except commit.CommitConflict as exc:
            log.error("commit conflict: %s", exc)
            return {"ok": False, "error": str(exc)}
        except LockLost as exc:
            log.error("commit refused: %s", exc)
            return {
                "ok": False,
                "lock_lost": True,
                "error": (
                    f"commit refused: {exc}; your changes are kept in {self.spill.path}: unmount, "
                    f"then run 'zipfuse recover {exc.archive}' once the other writer is gone"
                ),
            }
        except OSError as exc:
            log.error("commit failed: %s", exc)
            return {"ok": False, "error": f"commit failed, archive unchanged: {_oserror(exc)}"}
        except Exception as exc:
            log.exception("commit failed")
            return {"ok": False, "error": f"commit failed, archive unchanged: {exc}"}
        finally:
            self.progress = None
            if self.state == "committing":
                self.state = previous


def _peak_memory() -> str:
    """VmHWM of this process, for the log: the commit's peak is gone once the daemon exits."""
    try:
        with open("/proc/self/status") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("VmHWM")), "?")
    except OSError:
        return "?"


def _main_args() -> dict:
    """Worker-task limits of pyfuse3's request loop (ZIPFUSE_MAX_TASKS overrides, for tuning)."""
    value = os.environ.get("ZIPFUSE_MAX_TASKS")
    return {"max_tasks": int(value)} if value else {}


def _raise_fd_limit() -> None:
    """Open files in a mount and large files in a commit each hold a descriptor here."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _oserror(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.strerror} (free some space or quota and retry)"
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
