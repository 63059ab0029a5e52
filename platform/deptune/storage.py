"""Where a run keeps what every node must see: Ray's storage (Tune's experiment state, checkpoints, the
trials' journals, the sweep's published tracking), a local folder or a URI (`s3://bucket/path`, ...).

Opened through pyarrow, as Ray opens it; the endpoint and credentials come from the environment, as
pyarrow and boto read them (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...): a spec names `s3://bucket/path`.
An outage of the store (a restarted MinIO, a network blip) costs waiting, not trials:
- Ray's own uploads and downloads (checkpoints, experiment state) go through an S3 filesystem whose AWS
  retry strategy keeps trying for about `$DEPTUNE_STORAGE_RETRY_S` seconds (default 300) instead of
  pyarrow's ~2 s, after which a checkpoint that cannot be uploaded fails its trial;
- deptune's own files (`Folder`: journals, published tracking) are retried as long, and the outage is
  said once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from pyarrow import fs as pafs

log = logging.getLogger(__name__)
RETRY_ENV = "DEPTUNE_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0
T = TypeVar("T")

TRANSIENT = (
    "NETWORK_CONNECTION",
    "curlCode",
    "Could not connect",
    "Connection refused",
    "Connection reset",
    "timed out",
    "Timeout",
    "SERVICE_UNAVAILABLE",
    "SlowDown",
    "InternalError",
    "Service Unavailable",
)
"""Error texts of a store that is away or overloaded (pyarrow raises a plain OSError for all of them)."""


def is_uri(location: str) -> bool:
    return "://" in str(location)


def join(location: str, *parts: str) -> str:
    """`location`/parts for a folder or a URI (a URI's query, e.g. `?endpoint_override=`, stays at the end)."""
    location = str(location)
    if not is_uri(location):
        return os.path.join(location, *parts)
    base, sep, query = location.partition("?")
    return posixpath.join(base, *parts) + (sep + query if sep else "")


def uri_of(location: str, path: str) -> str:
    """A path on `location`'s filesystem (what Ray's checkpoints name: `bucket/key`) as a URI that says where
    it is (`s3://bucket/key`); a local path as it is."""
    if not is_uri(location) or is_uri(path):
        return path
    return f"{str(location).split('://', 1)[0]}://{path.lstrip('/')}"


def transient(error: BaseException) -> bool:
    """A connection problem worth waiting out (not a missing file, a refused permission, a bad bucket)."""
    if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(error, (OSError, ConnectionError, TimeoutError)) and any(t in str(error) for t in TRANSIENT)


def retry_seconds() -> float:
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path on it) for a folder or a URI, as pyarrow opens it (fails fast). One
    filesystem per store and process: opening an S3 one may ask the store for the bucket's region."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    parts = urlsplit(str(location))
    store = f"{parts.scheme}://{parts.netloc}?{parts.query}"
    if store not in _STORES:
        _STORES[store] = with_retries(location, lambda: pafs.FileSystem.from_uri(location)[0])
    return _STORES[store], f"{parts.netloc}{parts.path}".rstrip("/")


_STORES: dict[str, pafs.FileSystem] = {}


def ray_storage(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) to hand Ray as `storage_filesystem` / `storage_path`: S3 with AWS's standard retry
    strategy, attempts enough to outlast `retry_seconds()` (each wait doubles from ~0.2 s up to 20 s)."""
    filesystem, path = open_location(location)
    if not isinstance(filesystem, pafs.S3FileSystem):
        return filesystem, path
    query = {k: v[-1] for k, v in parse_qs(urlsplit(str(location)).query).items()}
    endpoint = (
        query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    options = {
        "region": filesystem.region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=8 + max(0, int((retry_seconds() - 60) // 20))),
    }
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(**options), path


class _Outage:
    """This process's view of one store: when an outage started, so it is said once, and its end once."""

    def __init__(self, location: str) -> None:
        self.location, self.since, self.lock = location, None, threading.Lock()

    def failed(self, error: BaseException) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                first = str(error).splitlines()[0][:200]
                log.warning(
                    "storage %s unreachable (%s): waiting and retrying for up to %.0f s",
                    self.location,
                    first,
                    retry_seconds(),
                )

    def recovered(self) -> None:
        with self.lock:
            if self.since is not None:
                log.warning("storage %s reachable again after %.0f s", self.location, time.monotonic() - self.since)
                self.since = None


_OUTAGES: dict[str, _Outage] = {}


def with_retries(location: str, call: Callable[[], T]) -> T:
    """`call()`, retried while the store at `location` is unreachable (up to `retry_seconds()`)."""
    import tenacity

    key = str(location).split("://", 1)[-1].split("/", 1)[0] if is_uri(location) else "local"
    outage = _OUTAGES.setdefault(key, _Outage(str(location).split("?", 1)[0]))
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        reraise=True,
        wait=tenacity.wait_exponential(multiplier=0.5, max=10),
        stop=tenacity.stop_after_delay(retry_seconds()),
        before_sleep=lambda state: outage.failed(state.outcome.exception()),
    )
    result = retrying(call)
    outage.recovered()
    return result


class Folder:
    """A folder on this machine's disk or on a remote store (see `open_location`), for the small files a
    run shares between processes and nodes: write whole files, list and read them back."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location)
        self.fs, self.path = open_location(self.location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _do(self, call: Callable[[], T]) -> T:
        return call() if self.local else with_retries(self.location, call)

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def __reduce__(self):
        return (Folder, (self.location,))

    def child(self, *parts: str) -> Folder:
        return Folder(join(self.location, *parts))

    def _at(self, name: str) -> str:
        return posixpath.join(self.path, name) if name else self.path

    def write(self, name: str, data: bytes) -> None:
        """Readers never see half a file: a local file is written aside and renamed; an object store puts
        an object whole."""
        target = self._at(name)
        if not self.local:

            def put() -> None:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)

            self._do(put)
            return
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        aside = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
        with self.fs.open_output_stream(aside) as out:
            out.write(data)
        self.fs.move(aside, target)

    def read(self, name: str) -> bytes:
        def get() -> bytes:
            with self.fs.open_input_stream(self._at(name)) as handle:
                return handle.read()

        return self._do(get)

    def exists(self, name: str = "") -> bool:
        return self._do(lambda: self.fs.get_file_info(self._at(name))).type != pafs.FileType.NotFound

    def files(self, name: str = "") -> list[str]:
        """The files below `name`, as paths relative to it, sorted (none if it does not exist)."""
        base = self._at(name)
        found = self._do(lambda: self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)))
        return sorted(
            posixpath.relpath(f.path, base)
            for f in found
            if f.type == pafs.FileType.File and ".tmp-" not in posixpath.basename(f.path)
        )

    def folders(self) -> list[str]:
        """The folders directly in this one."""
        found = self._do(
            lambda: self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        )
        return sorted(posixpath.basename(f.path) for f in found if f.type == pafs.FileType.Directory)

    def upload(self, local_dir: str | os.PathLike, name: str) -> None:
        """Copy a local folder's files in, under `name`."""
        for file in sorted(Path(local_dir).rglob("*")):
            if file.is_file():
                self.write(posixpath.join(name, file.relative_to(local_dir).as_posix()), file.read_bytes())

    def download(self, name: str, local_dir: str | os.PathLike) -> Path:
        """The files under `name`, copied into `local_dir` (created)."""
        for relative in self.files(name):
            target = Path(local_dir) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(posixpath.join(name, relative)))
        return Path(local_dir)

    def remove(self, name: str) -> None:
        """Delete a file or a folder below this one (nothing if missing)."""
        target = self._at(name)
        info = self._do(lambda: self.fs.get_file_info(target))
        if info.type == pafs.FileType.Directory:
            self._do(lambda: self.fs.delete_dir(target))
        elif info.type == pafs.FileType.File:
            self._do(lambda: self.fs.delete_file(target))
