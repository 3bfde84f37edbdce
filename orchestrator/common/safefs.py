"""Files inside a folder orch writes (a run folder), never through a link.

A run folder may come from anywhere (a tarball, a shared disk, a colleague), and a symbolic link
inside it (`report -> /somewhere`, `summary.csv -> ~/.bashrc`) must not let orch write outside it.
So a path inside the folder is opened from the folder down, one component at a time, each with
O_NOFOLLOW: no check-then-open race, and a link at any depth is refused in one line that names it.
The folder itself may be a link (results/latest -> ...): that one is the user's to name.

A file orch rewrites whole (run.json, summary.csv, a chart, the report) is written to a temporary
file beside it and renamed over it once complete: a reader (or a second `orch report`) sees the old
file or the new one, never half of one, and the rename replaces the entry itself, never what a
hard link shares it with. Appends (requests.jsonl) open the file in place, without following a link.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from orchestrator.common.errors import RunFolderError

NAME_MAX = 255  # bytes of one file or folder name (ext4, xfs, btrfs, tmpfs, NFS)
PATH_MAX = 4096  # bytes of a whole path
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LINK_FIX = "remove the link, or copy the run folder with `cp -rL RUN COPY` and use the copy"


def too_long(name: str) -> bool:
    return len(os.fsencode(name)) > NAME_MAX


def link_refused(where: Path, target: str) -> RunFolderError:
    return RunFolderError(f"{where}: a symbolic link (to {target}); orch writes nothing through a link in a run "
                          f"folder, since it may point anywhere: {LINK_FIX}")


def not_a_file(where: Path) -> RunFolderError:
    return RunFolderError(f"{where}: not a regular file (a FIFO, a device or a socket); orch writes its records "
                          "only to files it makes: remove it")


def _regular(fd: int, where: Path) -> int:
    """fd, if it is a regular file's (opened with O_NONBLOCK, so that a FIFO cannot hang orch)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_a_file(where)
    return fd


def name_refused(where: Path, name: str) -> RunFolderError:
    return RunFolderError(f"{where}: a name of {len(os.fsencode(name))} bytes, more than the {NAME_MAX} a file or "
                          "folder name may have: shorten it")


def _parts(rel: str | Path) -> list[str]:
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"{str(rel)!r} is not a path inside the folder")
    return list(path.parts)


def _is_link(name: str, dfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _refuse(exc: OSError, root: Path, parts: list[str], i: int, dfd: int) -> None:
    """Raise the one-line refusal where a link or an over-long name is why `exc` happened."""
    where = Path(root, *parts[:i + 1])
    if exc.errno == errno.ENAMETOOLONG or too_long(parts[i]):
        raise name_refused(where, parts[i]) from None
    if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened without blocking
        raise not_a_file(where) from None
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST) and _is_link(parts[i], dfd):
        try:
            target = os.readlink(parts[i], dir_fd=dfd)
        except OSError:
            target = "?"
        raise link_refused(where, target) from None


@contextmanager
def _folder(root: Path, parts: list[str]) -> Iterator[int]:
    """A descriptor of root/parts..., each folder made where missing, none of them a link."""
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                try:
                    os.mkdir(part, 0o777, dir_fd=dfd)
                except FileExistsError:
                    pass
                sub = os.open(part, _DIR, dir_fd=dfd)
            except OSError as exc:
                _refuse(exc, root, parts, i, dfd)
                raise
            os.close(dfd)
            dfd = sub
        yield dfd
    finally:
        os.close(dfd)


def open_inside(root: Path, rel: str | Path, flags: int, mode: int = 0o666) -> int:
    """os.open of a regular file root/rel: its folders made where missing; a link anywhere below
    root refused, and so is anything but a file (a FIFO would hang the sweep)."""
    parts = _parts(rel)
    with _folder(root, parts[:-1]) as dfd:
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            _refuse(exc, root, parts, len(parts) - 1, dfd)
            raise
    return _regular(fd, Path(root, *parts))


def ensure_dir(root: Path, rel: str | Path) -> Path:
    """root/rel as a folder (made where missing), with no link on the way."""
    with _folder(root, _parts(rel)):
        return Path(root, rel)


def open_append(root: Path, rel: str | Path, binary: bool = False) -> IO[Any]:
    fd = open_inside(root, rel, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


@contextmanager
def replacing(root: Path, rel: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A file written whole: into a temporary file beside root/rel, renamed over it once the block
    ends without an exception (else removed). An existing link at root/rel is refused."""
    parts = _parts(rel)
    name = parts[-1]
    with _folder(root, parts[:-1]) as dfd:
        if too_long(name):
            raise name_refused(Path(root, *parts), name)

        def refuse_link() -> None:
            if _is_link(name, dfd):
                _refuse(OSError(errno.ELOOP, "link"), root, parts, len(parts) - 1, dfd)

        refuse_link()
        tmp = f".{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dfd)
        try:
            with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
                yield f
            refuse_link()
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces the entry; follows nothing
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise


def write_inside(root: Path, rel: str | Path, data: str | bytes) -> None:
    with replacing(root, rel, binary=isinstance(data, bytes)) as f:
        f.write(data)


def nofollow(path: str, flags: int) -> int:
    """An opener for open() (a server's log): the file itself is never a link followed."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise link_refused(Path(path), os.readlink(path)) from None
        raise
    return _regular(fd, Path(path))


def read_tail(path: Path, limit: int) -> bytes:
    """At most the last `limit` bytes of a file, without reading the rest."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - limit))
        return f.read(limit)
