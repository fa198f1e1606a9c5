"""Where the package writes user files: refuse targets whose replacement would destroy
something the user keeps, and replace folders so that a crash at any instant leaves either the
old or the new complete folder at the target path.

Replacement writes the new folder beside the target, then swaps the two names in one atomic
``renameat2(RENAME_EXCHANGE)`` call (Linux), then deletes the old folder under its temporary
name. Where the kernel or file system cannot exchange names, the old folder is renamed aside
and the new one renamed in; a crash between those two renames is repaired by the next run,
which moves the old folder back. Temporaries carry this module's naming scheme
(``.<name>.pararnn-new-<pid>-<random>`` and ``.<name>.pararnn-old-<pid>-<random>``), so the next
run can remove those of killed runs, and only those.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Tests kill the process with SIGKILL at these points to check what a crash leaves behind.
KILL_POINT_ENV = "PARARNN_HF_KILL_AT"
_TEMP_RE = r"^\.{name}\.pararnn-(new|old)-(\d+)-[A-Za-z0-9_]+$"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class UnsafeOutputError(ValueError):
    """The output path would replace or delete something that must be kept."""


def kill_point(name: str) -> None:
    if os.environ.get(KILL_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path) or ".")).resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_unsafe_target(out: str | os.PathLike, keep: Iterable[str | os.PathLike] = ()) -> Path:
    """``out`` resolved, or ``UnsafeOutputError`` when replacing it would remove the current
    directory, the home folder, a file system root, or any path in ``keep`` (e.g. the input
    being converted), or a folder containing one of them."""
    if os.fspath(out).strip() == "":
        raise UnsafeOutputError("the output path is empty; name a new folder")
    target = _resolved(out)
    protected = {"the current directory": _resolved(os.getcwd()), "your home folder": _resolved(Path.home())}
    for path in keep:
        if path is not None and os.fspath(path):
            protected[f"the input {os.fspath(path)}"] = _resolved(path)
    if target.parent == target:
        raise UnsafeOutputError(f"the output {out} is a file system root; name a new folder")
    for what, path in protected.items():
        if _within(path, target):
            relation = "is" if path == target else "contains"
            raise UnsafeOutputError(
                f"the output {out} {relation} {what}; replacing it would delete that. Name a new folder"
            )
    return target


def check_target(out: str | os.PathLike, overwrite: bool, keep: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an existing ``out`` unless ``overwrite``, and an unsafe one always."""
    target = refuse_unsafe_target(out, keep)
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{out} exists and is not a folder; choose another output")
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    return target


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries that killed runs left beside ``target`` (ours only, and only
    those whose process is gone). If the target is missing and a killed run had moved the old
    folder aside, move it back first. Returns what was removed or restored."""
    pattern = re.compile(_TEMP_RE.format(name=re.escape(target.name)))
    done = []
    if not target.parent.is_dir():
        return done
    stale = []
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not pid_alive(int(m.group(2))):
            stale.append((m.group(1), entry))
    if not target.exists():
        old = [e for kind, e in stale if kind == "old"]
        if old:
            os.rename(old[0], target)  # the user's previous folder, back where it was
            done.append(old[0])
    for _, entry in stale:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(entry)
    return done


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b``; False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")


def _temporary(target: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.pararnn-{kind}-{os.getpid()}-", dir=target.parent))


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``; an existing target is deleted after the
    swap. At every instant the target path holds the old or the new folder (see module doc)."""
    if not target.exists():
        os.rename(new, target)
        return
    kill_point("before-swap")
    if _exchange(new, target):
        kill_point("after-swap")
        shutil.rmtree(new)  # now the old folder
        return
    aside = _temporary(target, "old")
    os.rmdir(aside)
    os.rename(target, aside)
    kill_point("between-renames")
    os.rename(new, target)
    kill_point("after-swap")
    shutil.rmtree(aside)


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool, keep: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out``; when the block succeeds it replaces ``out``
    (see ``replace_folder``). A failure or crash inside the block leaves ``out`` as it was.
    Folders are created with the user's umask, like any other file they write."""
    target = check_target(out, overwrite, keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target)
    if target.exists() and not overwrite:  # a killed run's folder was just restored
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    tmp = _temporary(target, "new")
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        kill_point("written")
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# Temporaries of this module inside a folder or beside it: never carried into a new version
_OUR_TEMPORARY = re.compile(r"^\.(.+\.pararnn-(new|old)|pararnn-save)-\d+-[A-Za-z0-9_]+$")


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links (no data is copied; a file system without
    hard links gets real copies)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copystat(src, dst)
        for entry in src.iterdir():
            _link_tree(entry, dst / entry.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _can_swap(target: Path) -> bool:
    """Whether ``target`` can be replaced by a sibling folder: its parent takes new entries and
    sits on the same file system (a mount point cannot be renamed over)."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = _temporary(target, "new")
        os.rmdir(probe)
    except OSError:
        return False
    return not target.exists() or target.stat().st_dev == parent.stat().st_dev


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _move_in(new: Path, target: Path, carry: Callable[[str], bool], marker: str) -> None:
    """Put ``new``'s entries into ``target`` one rename at a time, for a folder that cannot be
    swapped whole. ``marker`` (e.g. config.json) leaves first and arrives last, so the folder
    reads as finished only when every other file is in place; old entries that ``carry``
    rejects and ``new`` does not replace are removed."""
    names = sorted(p.name for p in new.iterdir())
    if (target / marker).exists():
        os.remove(target / marker)
    for entry in sorted(target.iterdir()):
        if entry != new and entry.name not in names and not carry(entry.name) and not _OUR_TEMPORARY.match(entry.name):
            _remove(entry)
    for name in sorted(names, key=lambda n: n == marker):
        if (target / name).exists() or (target / name).is_symlink():
            _remove(target / name)
        kill_point(f"moved-{name}")
        os.replace(new / name, target / name)


@contextmanager
def updated_folder(out: str | os.PathLike, carry: Callable[[str], bool], marker: str = "config.json") -> Iterator[Path]:
    """Yield an empty folder to write a new version of ``out`` into. When the block succeeds,
    ``out`` becomes what the block wrote, plus the entries of the old ``out`` that it did not
    write and that ``carry(name)`` accepts (e.g. a training run's checkpoints and logs, taken
    over as hard links: nothing is copied). A failure or crash inside the block leaves ``out``
    as it was.

    Where the parent folder takes new entries, the new version is a sibling swapped in with
    ``replace_folder``: at every instant ``out`` is the old or the new version. Otherwise
    (a read-only parent, a mount point) the files move in one by one, ``marker`` last."""
    target = _resolved(out)
    if _can_swap(target):
        clean_stale_temporaries(target)
        tmp = _temporary(target, "new")
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield tmp
            if target.is_dir():
                for entry in sorted(target.iterdir()):
                    written = (tmp / entry.name).exists() or (tmp / entry.name).is_symlink()
                    if not written and carry(entry.name) and not _OUR_TEMPORARY.match(entry.name):
                        _link_tree(entry, tmp / entry.name)
            kill_point("model-written")
            replace_folder(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():  # what killed in-place saves left
        m = _OUR_TEMPORARY.match(entry.name)
        if m and entry.name.startswith(".pararnn-save-") and not pid_alive(int(entry.name.split("-")[2])):
            shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".pararnn-save-{os.getpid()}-", dir=target))
    try:
        yield tmp
        kill_point("model-written")
        _move_in(tmp, target, carry, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _probe(folder: Path, path: str | os.PathLike, what: str) -> None:
    """Create and remove a file in ``folder`` (or, while it does not exist, its nearest existing
    parent): this also catches read-only mounts and holds for root, whom permission bits do not
    stop."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot write {what}{path}: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".pararnn-probe-"):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write {what}{path}: {err.strerror or err}") from None


def check_writable_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Fail now, not after the work, if files cannot be created in ``path``."""
    _probe(Path(path), path, f"{what} ")
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable_file(path: str | os.PathLike) -> Path:
    """Fail now, not after the work, if ``path`` cannot be written (created in its folder, or
    appended to where it exists)."""
    if os.fspath(path).strip() == "":
        raise ValueError("the output file path is empty")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder; name a file")
    _probe(target.parent, path, "")
    if target.exists():
        try:
            with open(target, "ab"):
                pass
        except OSError as err:
            raise PermissionError(f"cannot write {path}: {err.strerror or err}") from None
    return target


def check_output_file(path: str | os.PathLike, overwrite: bool) -> Path:
    """A results file the user asked for: never one of a model folder's own files (its config,
    weights, tokenizer or code), an existing file only with ``overwrite``, and one that can be
    written (``check_writable_file``)."""
    from .model_files import CONFIG_NAME, is_model_file

    target = Path(path)
    if is_model_file(target.name) and (target.parent / CONFIG_NAME).is_file():
        raise FileExistsError(
            f"{path} is one of the model folder's own files; writing results there would break the model. "
            "Name another file"
        )
    if (target.exists() or target.is_symlink()) and not target.is_dir() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or name another file")
    return check_writable_file(target)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: a crash mid-write leaves the
    previous file whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target
