"""S3 and S3-compatible object stores, through s3fs.

create-if-absent: ``PutObject`` with ``If-None-Match: *`` (s3fs ``pipe_file(..., mode="create")``,
which sends the header on every upload path since s3fs 2025.7). S3 decides atomically; a 412 means
the key is taken. A 412 can also answer our *own* PUT: botocore retries a conditional PUT whose
reply was lost (a timeout, a 5xx after the write) and the retry finds the object it just wrote.
So every "taken" is read back: True when the stored bytes are ours (records carry a random nonce).

atomic replace: one ``PutObject`` (or one multipart upload, completed atomically).

Listings go straight to ``ListObjectsV2``: s3fs's listing cache never expires by default and is
turned off here (``use_listings_cache=False``, fresh instances), because the claim protocol must
never act on a stale listing.

Processes and threads: the s3fs filesystem (an aiobotocore client on fsspec's I/O loop thread) is
created lazily, once per process: a child forked after the parent used the store gets its own, and
the parent's inherited client is never touched in the child (its sockets and event loop belong to
the parent). Calls from many threads are safe: s3fs runs them all on its loop.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ablator.errors import StoreError, StoreUnavailable, extra_hint
from ablator.store.base import (
    MAX_RECORD_BYTES,
    Capabilities,
    Entry,
    RecordTooLarge,
    Store,
    check_key,
    folder_prefix,
    too_large,
)

T = TypeVar("T")

MIN_S3FS = (2025, 7)

# Error codes that say "try again", whatever the HTTP status. ConditionalRequestConflict (409)
# is S3's answer to two conditional writes of one key in flight at once: the retry gets 200 or 412.
_TRANSIENT_CODES = frozenset(
    {
        "ConditionalRequestConflict",
        "OperationAborted",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "TransactionInProgressException",
    }
)


def _import_s3fs() -> Any:
    try:
        import s3fs
    except ImportError as exc:
        raise StoreError(
            f"s3:// stores need s3fs 2025.7 or newer: {extra_hint('s3', ['s3fs>=2025.7'])}"
        ) from exc
    parts = []
    for piece in str(getattr(s3fs, "__version__", "0")).split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_S3FS:
        # Older s3fs sends If-None-Match on some upload paths only: create-if-absent would not be
        # atomic for every record size.
        raise StoreError(
            f"s3fs {s3fs.__version__} is too old: ablator needs 2025.7 or newer, whose mode='create' sends "
            f"If-None-Match on every upload path: {extra_hint('s3', ['s3fs>=2025.7'])}"
        )
    return s3fs


def _sync(loop: Any, fn: Callable[[], Any]) -> Any:
    """Run the coroutine function ``fn`` on fsspec's I/O loop (where s3fs's client lives)."""
    from fsspec.asyn import sync

    return sync(loop, fn)


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(error code, HTTP status) of the botocore ClientError behind ``exc`` (s3fs translates
    ClientErrors into OSErrors and keeps the original as the cause), or None."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        response = getattr(cur, "response", None)
        if isinstance(response, dict) and "Error" in response:
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code, status
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _cannot_connect(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says that no connection to the endpoint could be made."""
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return False
        if isinstance(cur, ConnectionRefusedError) or {c.__name__ for c in type(cur).__mro__} & {
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ClientConnectorError",
        }:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed: throttling, 5xx, write conflicts, dropped
    connections and timeouts. Never a 4xx that states a fact (404, 403, 412)."""
    ce = _client_error(exc)
    if ce is not None:
        code, status = ce
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    names: set[str] = set()
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            break
        if isinstance(cur, (ConnectionError, TimeoutError)):
            return True
        names.update(c.__name__ for c in type(cur).__mro__)
        cur = cur.__cause__ or cur.__context__
    # botocore's connection errors, aiohttp's client errors, fsspec's timeout: matched by name so
    # that this module imports neither library at import time.
    return bool(
        names
        & {
            "HTTPClientError",
            "ConnectionClosedError",
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ResponseParserError",
            "IncompleteReadError",
            "IncompleteRead",
            "ClientPayloadError",
            "ClientConnectionError",
            "ServerDisconnectedError",
            "ServerTimeoutError",
            "FSTimeoutError",
        }
    )


class _MissingBucket(Exception):
    """HeadBucket said 404 (turned into a StoreError naming the operation that needed it)."""

    def __init__(self, fs: Any) -> None:
        super().__init__("bucket does not exist")
        self.fs = fs


def _list_page(args: dict[str, Any], fs: Any) -> dict[str, Any]:
    page: dict[str, Any] = fs.call_s3("list_objects_v2", **args)
    return page


# Every live S3Store, so that a forked child can give each one fresh locks (a lock held by
# another thread at fork time stays locked forever in the child).
_STORES: weakref.WeakSet[S3Store] = weakref.WeakSet()
# Filesystems inherited from a parent process. Kept referenced, never used: closing or collecting
# them in the child would run s3fs's finalizer on the parent's event loop and sockets.
_INHERITED: list[Any] = []


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class S3Store(Store):
    """A store under ``s3://bucket/prefix``.

    >>> store = S3Store("my-bucket", "experiments/digits")                  # doctest: +SKIP
    >>> store = S3Store("b", "exp", endpoint_url="http://127.0.0.1:9000")    # doctest: +SKIP

    Endpoint, credentials and region come from the usual AWS environment (``AWS_ENDPOINT_URL`` or
    ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, ...)
    unless ``options`` say otherwise; ``options`` go to :class:`s3fs.S3FileSystem`
    (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``, ``config_kwargs``, ...), and
    ``region`` is a shortcut for ``client_kwargs={"region_name": ...}``.

    Failed requests that may succeed when repeated (5xx, throttling, 409
    ConditionalRequestConflict, dropped connections, timeouts) are retried up to ``attempts``
    times in all, with exponential backoff from ``backoff`` seconds (capped at ``max_backoff``)
    and full jitter, on top of botocore's own retries; what still fails raises StoreError naming
    the URL, the key and the operation.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        read_only: bool = False,
        attempts: int = 6,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        max_record_bytes: int = MAX_RECORD_BYTES,
        **options: Any,
    ) -> None:
        self._s3fs = _import_s3fs()
        self.max_record_bytes = max_record_bytes
        bucket = bucket.strip("/")
        if not bucket or "/" in bucket:
            raise StoreError(f"S3 store: invalid bucket name {bucket!r}; expected s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix, f"s3://{bucket}/{self.prefix}")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.read_only = read_only
        if attempts < 1:
            raise StoreError(f"{self.url}: attempts must be at least 1, not {attempts}")
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        if options.get("use_listings_cache"):
            raise StoreError(
                f"{self.url}: use_listings_cache=True is refused: s3fs's listing cache never expires by "
                "default, and the claim protocol must see every key that exists"
            )
        opts = dict(options)
        region = opts.pop("region", None) or opts.pop("region_name", None)
        if region:
            opts["client_kwargs"] = {**opts.get("client_kwargs", {}), "region_name": region}
        # One retry layer, ours: s3fs's own loop (its ``retries`` class attribute) would multiply
        # with it. botocore still retries 5xx and throttling underneath, as configured by
        # AWS_RETRY_MODE / AWS_MAX_ATTEMPTS or ``config_kwargs={"retries": ...}``.
        self._s3fs_retries = int(opts.pop("retries", 1))
        opts["use_listings_cache"] = False
        opts["skip_instance_cache"] = True
        self._options = opts
        self._lock = threading.Lock()
        self._fs: Any = None
        self._pid = -1
        self._closed = False
        self._contacted = False  # the endpoint answered once (connection errors are then retried)
        _STORES.add(self)

    # -- connection ------------------------------------------------------------------------
    def _filesystem(self) -> Any:
        """This process's s3fs filesystem, created on first use (and anew after a fork)."""
        fs, pid = self._fs, os.getpid()
        if fs is not None and self._pid == pid:
            return fs
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.url}: the store was closed")
            if self._fs is not None and self._pid != pid:
                _INHERITED.append(self._fs)  # the parent's: never used or closed here
                self._fs = None
            if self._fs is None:
                fs = self._s3fs.S3FileSystem(**self._options)
                fs.retries = self._s3fs_retries
                try:
                    self._check_bucket(fs)
                except StoreError:
                    raise
                except _MissingBucket:
                    raise
                except Exception as exc:
                    if not self._contacted and _cannot_connect(exc):
                        # First contact: an endpoint that cannot be reached now is a wrong URL or
                        # a network that is down, not a blip worth a minute of retries. (A store
                        # that answered before, e.g. in the parent of a forked worker, retries.)
                        raise StoreError(
                            f"{self.url}: cannot reach the S3 endpoint {self._endpoint(fs)} "
                            f"(bucket {self.bucket!r}): {type(exc).__name__}: {exc}. Check the endpoint "
                            "(AWS_ENDPOINT_URL / endpoint_url), the network and any proxy settings"
                        ) from exc
                    raise
                self._fs, self._pid = fs, pid
                self._contacted = True
            return self._fs

    @property
    def endpoint(self) -> str:
        """The endpoint this store talks to, as the user would name it (read from the options
        and the environment: nothing is contacted)."""
        return self._endpoint(None)

    def _endpoint(self, fs: Any) -> str:
        endpoint = (
            self._options.get("endpoint_url")
            or getattr(fs, "endpoint_url", None)
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return str(endpoint) if endpoint else "of AWS (no endpoint_url or AWS_ENDPOINT_URL set)"

    def _check_bucket(self, fs: Any) -> None:
        """Fail early, and clearly, when the bucket does not exist: a missing bucket would
        otherwise look like a store with no records in it."""
        try:
            fs.call_s3("head_bucket", Bucket=self.bucket)
        except PermissionError:
            pass  # no s3:ListBucket on HEAD with some providers; the first real call will tell
        except FileNotFoundError as exc:
            raise _MissingBucket(fs) from exc
        # An old botocore (an unconstrained install can resolve s3fs beside an ancient
        # aiobotocore) does not know If-None-Match and would refuse every create.
        put = fs.s3.meta.service_model.operation_model("PutObject")
        if "IfNoneMatch" not in put.input_shape.members:
            import botocore

            raise StoreError(
                f"{self.url}: botocore {botocore.__version__} cannot send If-None-Match (conditional PUT), "
                f"which create-if-absent needs: {extra_hint('s3', ['s3fs>=2025.7', 'aiobotocore>=2.15'])}"
            )

    def _missing_bucket(self, op: str, key: str, fs: Any) -> StoreError:
        endpoint = (
            getattr(fs, "endpoint_url", None)
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        where = f" at {endpoint}" if endpoint else ""
        what = f"{op} {key!r} in {self.url}" if key else f"{op} {self.url}"
        # A server that is not S3 at all (a web server, the wrong port) answers HeadBucket with a
        # plain 404 too; one more S3 request tells the two apart, and the message says both.
        try:
            fs.call_s3("list_buckets")
        except PermissionError:
            pass  # an S3 AccessDenied: it is S3
        except Exception as exc:
            return StoreError(
                f"{what}: bucket {self.bucket!r} was not found{where}, and that endpoint did not answer an S3 "
                f"ListBuckets request either ({type(exc).__name__}: {exc}): is it an S3 endpoint? Check "
                "endpoint_url / AWS_ENDPOINT_URL (scheme, host and port); if it is S3, create the bucket "
                f"first (`aws s3 mb s3://{self.bucket}`)"
            )
        return StoreError(
            f"{what}: bucket {self.bucket!r} does not exist{where}. Create it first, e.g. "
            f"`aws s3 mb s3://{self.bucket}` (add --endpoint-url for an S3-compatible server), then retry"
        )

    def _path(self, key: str) -> str:
        check_key(key, self.url)
        return f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"

    def _s3key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(fs)`` with bounded retries of transient errors.

        FileNotFoundError (absent key) and FileExistsError (412 on a conditional PUT) are answers,
        not failures: they go to the caller. Anything else that is not transient, or still fails
        after ``attempts``, becomes a StoreError naming URL, key and operation.
        """
        attempt = 0
        while True:
            attempt += 1
            fs = None
            try:
                fs = self._filesystem()
                return fn(fs)
            except StoreError:
                raise
            except _MissingBucket as exc:
                raise self._missing_bucket(op, key, exc.fs) from exc
            except Exception as exc:
                ce = _client_error(exc)
                if ce is not None and ce[0] == "NoSuchBucket":
                    raise self._missing_bucket(op, key, fs) from exc
                if isinstance(exc, (FileNotFoundError, FileExistsError)) and not _is_transient(exc):
                    raise
                if not _is_transient(exc) or attempt >= self.attempts:
                    raise self._error(op, key, exc, attempt) from exc
                # Exponential backoff with full jitter: many agents hitting one throttled prefix
                # must not retry in lockstep.
                time.sleep(random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))))

    def _error(self, op: str, key: str, exc: BaseException, attempt: int) -> StoreError:
        ce = _client_error(exc)
        detail = f"{type(exc).__name__}: {exc}"
        if ce is not None:
            detail = f"{ce[0]} (HTTP {ce[1]}): {exc}"
        tries = f" after {attempt} attempts" if attempt > 1 else ""
        hint = ""
        if isinstance(exc, PermissionError) or (ce is not None and ce[1] == 403):
            hint = " (check the AWS credentials and the bucket policy)"
        # A transient error that outlasted every retry: the store did not answer for now.
        cls = StoreUnavailable if _is_transient(exc) else StoreError
        return cls(f"{op} {key!r} in {self.url} failed{tries}: {detail}{hint}")

    def _check_writable(self, op: str, key: str) -> None:
        if self.read_only:
            raise StoreError(f"{op} {key!r}: store {self.url} was opened read-only")

    # -- reads -----------------------------------------------------------------------------
    def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        self._path(key)
        s3key = self._s3key(key)
        limit = self.read_limit(max_bytes)

        def get(fs: Any) -> tuple[int, bytes | None]:
            # One GET: its headers carry the size, so an object over the limit is refused before
            # its body is read (the connection is dropped), at no extra request per read.
            resp = fs.call_s3("get_object", Bucket=self.bucket, Key=s3key)
            body = resp["Body"]
            size = int(resp.get("ContentLength", 0))
            if size > limit:
                body.close()
                return size, None
            return size, bytes(_sync(fs.loop, body.read))

        try:
            size, data = self._call("read", key, get)
        except FileNotFoundError:
            raise FileNotFoundError(key) from None
        if data is None:
            raise too_large(self.url, key, size, limit)
        return data

    def stat(self, key: str) -> Entry | None:
        self._path(key)
        s3key = self._s3key(key)
        try:
            info = self._call(
                "stat", key, lambda fs: fs.call_s3("head_object", Bucket=self.bucket, Key=s3key)
            )
        except FileNotFoundError:
            return None
        modified = info.get("LastModified")
        return Entry(
            key,
            int(info.get("ContentLength", 0)),
            modified.timestamp() if modified is not None else None,
            info.get("ETag"),
        )

    def _pages(self, op: str, prefix: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every page of ListObjectsV2 for ``prefix`` (a folder prefix relative to the store)."""
        s3prefix = folder_prefix(self._s3key(prefix) if prefix else self.prefix)
        pages: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": s3prefix, **kwargs}
            if token:
                args["ContinuationToken"] = token
            page: dict[str, Any] = self._call(op, prefix, functools.partial(_list_page, args))
            pages.append(page)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return pages

    def list(self, prefix: str) -> list[Entry]:
        p = folder_prefix(prefix)
        if p:
            check_key(p.rstrip("/"), self.url)
        root = folder_prefix(self.prefix)
        out: list[Entry] = []
        for page in self._pages("list", p.rstrip("/")):
            for obj in page.get("Contents", ()):
                full: str = obj["Key"]
                if full.endswith("/"):
                    continue  # a "folder" marker made by a console, not a key
                modified = obj.get("LastModified")
                out.append(
                    Entry(
                        full[len(root) :],
                        int(obj.get("Size", 0)),
                        modified.timestamp() if modified is not None else None,
                        obj.get("ETag"),
                    )
                )
        out.sort(key=lambda e: e.key)
        return out

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        p = folder_prefix(prefix)
        if p:
            check_key(p.rstrip("/"), self.url)
        base = folder_prefix(self._s3key(p.rstrip("/")) if p else self.prefix)
        names: set[str] = set()
        for page in self._pages("list_dirs", p.rstrip("/"), Delimiter="/"):
            for cp in page.get("CommonPrefixes", ()):
                name = cp["Prefix"][len(base) :].rstrip("/")
                if name:
                    names.add(name)
        return sorted(names)

    # -- writes ----------------------------------------------------------------------------
    def create(self, key: str, data: bytes, *, durable: bool = False) -> bool:
        # ``durable`` needs nothing here: S3 acknowledges a PUT only once it is stored durably.
        self._check_writable("create", key)
        path = self._path(key)
        body = bytes(data)
        try:
            self._call("create", key, lambda fs: fs.pipe_file(path, body, mode="create"))
            return True
        except FileExistsError:
            pass
        # 412: taken -- by somebody else, or by our own earlier try whose reply was lost (botocore
        # or our retry loop resent a PUT that had succeeded). Records carry a random nonce, so
        # byte equality means the stored body is this call's.
        try:
            # never more than our own body: a larger one is not ours
            return self.read(key, max_bytes=len(body)) == body
        except RecordTooLarge:
            return False
        except FileNotFoundError:
            return False  # deleted in between: not ours either way

    def replace(self, key: str, data: bytes, *, durable: bool = False) -> None:
        self._check_writable("replace", key)
        path = self._path(key)
        body = bytes(data)
        self._call("replace", key, lambda fs: fs.pipe_file(path, body))

    def delete(self, key: str) -> None:
        self._check_writable("delete", key)
        self._path(key)
        s3key = self._s3key(key)
        with contextlib.suppress(FileNotFoundError):  # absent is fine
            self._call("delete", key, lambda fs: fs.call_s3("delete_object", Bucket=self.bucket, Key=s3key))

    # -- misc ------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        endpoint = (
            self._options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS S3"
        )
        return Capabilities(
            backend="s3",
            url=self.url,
            atomic_create=True,
            atomic_replace=True,
            filesystem=f"s3 ({endpoint})",
            read_only=self.read_only,
            notes=[
                "create-if-absent: PutObject with If-None-Match: * (S3-compatible servers must honour it: "
                "the self-test checks)"
            ],
        )

    def close(self) -> None:
        """Drop this process's client; s3fs closes its connections when it is collected."""
        with self._lock:
            self._closed = True
            if self._pid == os.getpid():
                self._fs = None
