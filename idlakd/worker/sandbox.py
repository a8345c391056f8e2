"""Confine a synthesis worker: an address-space limit, and Landlock where the kernel has it.

The worker calls ``confine`` once, after its stdout guard and before it
imports an engine, so whatever the engine does with a hostile text happens
inside these limits:

- ``RLIMIT_AS`` (soft and hard) caps the worker's virtual size, and so that of
  any program it starts; an allocation past it fails (``MemoryError`` in
  Python, NULL from ``malloc``) instead of growing into the host's memory.
  Its ``oom_score_adj`` is raised so that an out-of-memory kill (the unit's
  ``MemoryMax``) takes a worker rather than the daemon.
- Landlock (Linux >= 5.13): reading and executing only beneath the paths the
  worker needs (its Python, the idlakd package, its engine's data, system
  libraries and what its command line names), no writing, creating or
  removing files anywhere (``/dev/null`` excepted), and no signals to
  processes outside the worker (ABI >= 6). eSpeak and Idlak workers also lose
  TCP ``bind``/``connect`` (ABI >= 4) and abstract unix sockets (ABI >= 6); a
  command voice keeps its network, since its program is the admin's choice.
  Descriptors opened before (stdin, the protocol pipe, stderr) keep working.

Where Landlock is missing (an old kernel, disabled at boot, or a seccomp
filter answering EPERM, as in some containers) one WARNING is logged and the
worker runs with the memory limit only.

This module imports nothing else of idlakd: the worker must stay separable
from the daemon, so everything comes from the worker's command line.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import site
import stat
import sys
import sysconfig
from pathlib import Path
from typing import Final, Iterable, Sequence

logger = logging.getLogger("idlakd.worker.sandbox")

MIB: Final = 1024 * 1024
#: A worker's oom_score_adj (-1000..1000; raising it needs no privilege): under the unit's
#: MemoryMax the kernel then kills a worker, which the daemon replaces, before the daemon.
OOM_SCORE_ADJ: Final = 500

# Syscall numbers: the same on x86_64 and aarch64 (and every other architecture:
# Landlock came after the unified syscall table).
_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LANDLOCK_ADD_RULE: Final = 445
_SYS_LANDLOCK_RESTRICT_SELF: Final = 446
_PR_SET_NO_NEW_PRIVS: Final = 38
_LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH: Final = 1

# Filesystem access rights (include/uapi/linux/landlock.h).
FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
_FS_REFER: Final = 1 << 13
FS_TRUNCATE: Final = 1 << 14
_FS_IOCTL_DEV: Final = 1 << 15
# The rights each ABI version added: ABI 1 had bits 0-12 (execute ... make_sym).
_FS_RIGHTS_BY_ABI: Final = {1: (1 << 13) - 1, 2: _FS_REFER, 3: FS_TRUNCATE, 5: _FS_IOCTL_DEV}
# Rights that make sense on a file (not a directory) in a path-beneath rule.
_FS_FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1

READ: Final = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# System paths every worker may read: shared libraries load lazily (ctypes, C
# extensions), and the loader reads its cache; random bytes and its own /proc.
_SYSTEM_READ: Final = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32",
                       "/usr/lib64", "/usr/libx32", "/etc/ld.so.cache", "/dev/urandom",
                       "/dev/random", "/proc/self", "/sys/devices/system/cpu")
# A command voice runs a program of the admin's choice, which may be any tool
# installed on the system; /etc stays closed (it holds the daemon's config).
_COMMAND_READ: Final = ("/usr", "/bin", "/sbin")
# onnxruntime (piper) reads the CPU's features there to pick its kernels (AVX2, AVX-512...):
# without it, it warns and may run slower.
_PIPER_READ: Final = ("/proc/cpuinfo",)
# Written by the worker when its parent is gone, and by programs as a sink.
_WRITABLE_FILES: Final = ("/dev/null",)


class _RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr (the kernel accepts it whole, fields it lacks left 0)."""

    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr (packed: 12 bytes)."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _syscall(number: int, *args: int | ctypes.c_void_p | ctypes.c_size_t) -> int:
    """Call a syscall by number; raises OSError with the kernel's errno on failure."""
    # syscall(2) is variadic and reads every argument as a long: pass full-width values.
    wide = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = int(_libc.syscall(ctypes.c_long(number), *wide))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def limit_memory(megabytes: int) -> None:
    """Cap the address space (soft and hard, never above an existing hard limit); 0: no cap."""
    if megabytes <= 0:
        return
    wanted = megabytes * MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    # The hard limit too: without CAP_SYS_RESOURCE (the unit grants none) the
    # worker, or code that took it over, cannot raise it again.
    resource.setrlimit(resource.RLIMIT_AS, (wanted, wanted))


def prefer_as_oom_victim() -> None:
    """Raise this process's OOM score, so an out-of-memory kill takes a worker, not the daemon."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as adj:
            adj.write(str(OOM_SCORE_ADJ))
    except OSError as exc:  # no /proc (a chroot): the limit above still holds
        logger.debug("cannot set oom_score_adj: %s", exc)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock cannot be used here."""
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(None), ctypes.c_size_t(0),
                        _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as exc:
        # ENOSYS: kernel without it; EOPNOTSUPP: built in but disabled at boot;
        # EPERM: a seccomp filter (a container runtime, an old systemd unit).
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            return 0
        raise


def python_paths() -> list[str]:
    """Where this Python's interpreter, standard library and installed packages live."""
    paths = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    libdir = sysconfig.get_config_var("LIBDIR")  # libpython, for a program that starts Python
    if isinstance(libdir, str):
        paths.append(libdir)
    if sys.prefix != sys.base_prefix:
        paths.append(sys.prefix)  # a virtualenv: its pyvenv.cfg and bin/
    paths += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    # Other package directories on sys.path (zip files, extra site dirs), but not
    # the working directory or a source tree, which may hold the daemon's data.
    paths += [entry for entry in sys.path
              if entry.endswith((".zip", ".egg", "site-packages", "dist-packages"))]
    return paths


def package_path() -> str:
    """The idlakd package directory (found from this file, without importing idlakd)."""
    return str(Path(__file__).resolve().parents[1])


def espeak_paths() -> list[str]:
    """The eSpeak NG library and data of the espeakng-loader wheel (nothing if it is missing)."""
    try:
        import espeakng_loader  # type: ignore[import-untyped]
        return [os.path.dirname(str(espeakng_loader.get_library_path())),
                str(espeakng_loader.get_data_path())]
    except (ImportError, RuntimeError, OSError) as exc:
        # The engine reports the missing library itself when it loads.
        logger.debug("espeakng-loader paths unknown: %s", exc)
        return []


def read_paths(engine: str, directory: str, idlak_root: str, extra: Iterable[str]) -> list[str]:
    """Everything a worker of this engine may read: Python, idlakd, engine data, system, extras."""
    paths = [*python_paths(), package_path(), *_SYSTEM_READ]
    if engine == "espeak":
        paths += espeak_paths()
    if engine == "tangle" and idlak_root:
        paths.append(idlak_root)  # pyIdlak, Kaldi's libraries and Idlak's text data
    if engine == "command":
        paths += _COMMAND_READ
    if engine == "piper":
        paths += _PIPER_READ
    paths += [path for path in (directory, *extra) if path]
    return list(dict.fromkeys(os.path.abspath(path) for path in paths))


def _add_rule(ruleset: int, path: str, access: int) -> bool:
    """Allow access beneath path (file rights only, if it is a file); False if it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FS_FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                 ctypes.c_void_p(ctypes.addressof(rule)), 0)
    finally:
        os.close(fd)
    return True


def restrict_files(readable: Sequence[str], abi: int, *, network: bool) -> None:
    """Apply a Landlock ruleset: read+execute beneath readable, nothing else; raises OSError."""
    handled = 0
    for version, rights in _FS_RIGHTS_BY_ABI.items():
        if abi >= version:
            handled |= rights
    attr = _RulesetAttr(handled, 0, 0)
    if not network and abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = _SCOPE_SIGNAL | (0 if network else _SCOPE_ABSTRACT_UNIX_SOCKET)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(ctypes.addressof(attr)),
                       ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    try:
        added = [path for path in readable if _add_rule(ruleset, path, READ & handled)]
        for path in _WRITABLE_FILES:
            _add_rule(ruleset, path, (READ | FS_WRITE_FILE | FS_TRUNCATE) & handled)
        # Required unless the process has CAP_SYS_ADMIN; harmless (and wanted) anyway.
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, *(ctypes.c_ulong(arg) for arg in (1, 0, 0, 0))) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    logger.debug("Landlock ABI %d: read-only beneath %s", abi, ", ".join(added))


def confine(engine: str, memory_mb: int, directory: str = "", idlak_root: str = "",
            extra_read: Sequence[str] = ()) -> bool:
    """Limit memory, then restrict files (and signals); False if Landlock was unavailable."""
    limit_memory(memory_mb)
    prefer_as_oom_victim()  # before Landlock, which makes /proc/self read-only
    abi = landlock_abi()
    if abi <= 0:
        logger.warning("Landlock is not available on this kernel: the worker can read any file "
                       "its user can (only the memory limit applies)")
        return False
    restrict_files(read_paths(engine, directory, idlak_root, extra_read), abi,
                   network=engine == "command")
    return True
