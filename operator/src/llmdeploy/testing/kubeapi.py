"""An in-process Kubernetes API server for the operator's integration tests and benchmarks.

Owns: ``KubeAPI``, a real HTTP Kubernetes API on 127.0.0.1 (free port) that kopf and the
official ``kubernetes`` client reach through a kubeconfig (``write_kubeconfig`` /
``use_kubeconfig``), run as an async context manager or, for sync tests, in a background thread.
It implements discovery, CRD registration (``register_crd`` or POSTing a CRD), create / get /
list / watch / PUT / PATCH / DELETE with one global resourceVersion, generation, the status and
scale subresources, finalizers, ownerReference garbage collection, no-op write detection,
structural-schema pruning / defaulting / validation answered with apiserver-worded 422s, CEL
``x-kubernetes-validations`` (cel-python), a traffic log (``requests``, ``writes``,
``verbs_used``) and seeded fault injection (``FaultPlan``).

Built on PyPI ``kmock`` 0.8: the HTTP handler subclasses ``kmock.KubernetesScaffold``, so kmock
supplies request parsing and recording, the ``api.handler[...] << payload`` DSL (a test's own
reactions answer before the emulation), crash accumulation (``api.errors``) and Status rendering.
kmock's stateful ``KubernetesEmulator`` is not used: it stamps no resourceVersion / uid /
generation / creationTimestamp, answers a failed JSON-patch ``test`` with 500, lists with a
placeholder resourceVersion, ignores ``?resourceVersion`` on watches and replays every object as
ADDED (losing events between snapshot and subscription), ignores generateName, cannot register
CRDs, and lacks PUT, selectors, OpenAPI, GC, schema validation and the spec/status split; its
request parser even fails on ``/api/v1/namespaces``. Its state handling sits in one ``_handle``
method that cannot be extended piecewise, so store, routing, watch and validation are
implemented here (``_kube_store``, ``_kube_types``, ``_kube_schema``, ``_kube_http``).
``kmock.Server`` is not used either: its DNS interceptor patches aiohttp's resolver process-wide
and must be exited LIFO, which breaks emulators living in other threads; aiohttp's
``RawTestServer`` listens instead.

Does not prove: authentication beyond one static token; RBAC (it only records the verbs used,
for comparison with the chart's Role); admission webhooks; server-side apply (415); strategic
merge by patchMergeKey on built-ins (a plain merge patch here; on custom resources it is 415, as
upstream); dryRun; snapshot-consistent pagination (``limit``/``continue`` page over the current
state); conversion between CRD versions (objects are served as stored, relabelled with the
requested apiVersion); shared storage of core and events.k8s.io Events; CEL cost limits and
Kubernetes CEL libraries; validation ratcheting and ``format`` checks; the asynchrony of the
real garbage collector and namespace controller (both act synchronously here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.test_utils
import yaml

from llmdeploy.testing._kube_http import KubeHandler, RequestRecord, TrafficLog
from llmdeploy.testing._kube_schema import CEL_AVAILABLE
from llmdeploy.testing._kube_store import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    Store,
)
from llmdeploy.testing._kube_types import (
    JSON,
    ApiError,
    ResourceDef,
    ScaleSpec,
    clone,
    parse_label_selector,
)
from llmdeploy.testing.kube_faults import FaultDecision, FaultPlan

__all__ = [
    "CEL_AVAILABLE",
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_PATCH",
    "ApiError",
    "FaultDecision",
    "FaultPlan",
    "KubeAPI",
    "RequestRecord",
    "ResourceDef",
    "ScaleSpec",
    "load_crd",
]

T = TypeVar("T")
CRD_GVR = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


@functools.lru_cache(maxsize=32)
def _load_crd_cached(path: str, mtime_ns: int, size: int) -> JSON:
    del mtime_ns, size  # cache-key only: a changed file is read again
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as file:
        for doc in yaml.load_all(file, Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                return doc
    raise ValueError(f"{path} holds no CustomResourceDefinition")


def load_crd(path: str | os.PathLike[str]) -> JSON:
    """Read a CRD manifest (cached per file version; the result must not be mutated)."""
    stat = os.stat(path)
    return _load_crd_cached(os.fspath(path), stat.st_mtime_ns, stat.st_size)


class KubeAPI:
    """The emulated API server. Use ``async with KubeAPI() as api`` or ``with KubeAPI() as api``.

    The sync form runs the server on its own event loop in a background thread, so a sync test
    can drive it while ``kopf.testing.KopfRunner`` runs the operator in yet another thread.
    All object-access methods are thread-safe and bypass HTTP (they are not recorded).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        namespaces: Iterable[str] = ("default", "kube-system", "kube-public"),
        crds: Iterable[Mapping[str, Any] | str | os.PathLike[str]] = (),
        faults: FaultPlan | None = None,
        history_limit: int = 10_000,
        bookmark_interval: float = 60.0,
        server_version: tuple[str, str] = ("1", "31"),
        seed: int = 0,
    ) -> None:
        self.store = Store(history_limit=history_limit, seed=seed)
        self.faults: FaultPlan | None = faults
        self.token = token
        self._log = TrafficLog()
        self._bookmark_interval = bookmark_interval
        self._server_version = server_version
        self._handler: KubeHandler | None = None
        self._server: aiohttp.test_utils.RawTestServer | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._thread_error: BaseException | None = None
        for namespace in namespaces:
            self.ensure_namespace(namespace)
        for crd in crds:
            self.register_crd(crd)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._handler is not None:
            raise RuntimeError("the emulator is already running")
        handler = KubeHandler(
            self.store,
            self._log,
            token=self.token,
            faults=lambda: self.faults,
            bookmark_interval=self._bookmark_interval,
            server_version=self._server_version,
        )
        await handler.__aenter__()
        # Not kmock.Server: its DNS interceptor patches aiohttp's resolver process-wide and must be
        # exited in LIFO order, which breaks emulators started and stopped in different threads.
        server = aiohttp.test_utils.RawTestServer(handler, host="127.0.0.1")
        try:
            await server.start_server()
        except BaseException:
            await handler.__aexit__(None, None, None)
            raise
        self._handler, self._server = handler, server
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        handler, server = self._handler, self._server
        self._handler = self._server = None
        if handler is None or server is None:
            return
        handler.begin_close()
        try:
            await server.close()
        finally:
            await handler.__aexit__(exc_type, exc, tb)

    def start(self) -> Self:
        """Run the server in a background thread (for sync tests); returns once it listens."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        ready = threading.Event()

        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                async with self:
                    ready.set()
                    await self._thread_stop.wait()
            finally:
                ready.set()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start() or stop()
                self._thread_error = exc

        self._thread = threading.Thread(target=run, name="kube-api-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._thread_error is not None or self._server is None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("the emulator failed to start") from self._thread_error
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._thread_loop, self._thread_stop
        if thread is None or loop is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        self._thread = self._thread_loop = self._thread_stop = None
        if self._thread_error is not None:
            raise RuntimeError("the emulator thread failed") from self._thread_error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- connecting --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` while running."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return str(self._server.make_url("")).rstrip("/")

    @property
    def handler(self) -> KubeHandler:
        """The kmock handler: ``api.handler[kmock.method.GET, "/x"] << 500`` overrides answers."""
        if self._handler is None:
            raise RuntimeError("the emulator is not running")
        return self._handler

    @property
    def errors(self) -> list[Exception]:
        """Crashes inside the emulator (or a test's reactions) while serving requests."""
        return list(self.handler.errors)

    def kubeconfig(self, namespace: str = "default") -> JSON:
        user: JSON = {"token": self.token} if self.token is not None else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
            "current-context": "emulator",
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """Write a kubeconfig for kopf / the kubernetes client (point KUBECONFIG at it)."""
        target = Path(path)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace)), encoding="utf-8")
        return target

    @contextlib.contextmanager
    def use_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Iterator[Path]:
        """Write a kubeconfig and make it the process default (KUBECONFIG) while inside.

        Besides the environment variable, this repoints ``kubernetes.config``'s default location,
        which that module reads once at import: without it, kopf's default login (the client's
        ``load_kube_config()``) would ignore a KUBECONFIG set after ``kubernetes`` was imported.
        """
        target = self.write_kubeconfig(path, namespace)
        saved_env = os.environ.get("KUBECONFIG")
        module = sys.modules.get("kubernetes.config.kube_config")
        saved_default = getattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", None)
        os.environ["KUBECONFIG"] = str(target)
        if module is not None:
            setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", str(target))  # noqa: B010
        try:
            yield target
        finally:
            if saved_env is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved_env
            if module is not None:
                setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", saved_default)  # noqa: B010

    # -- resources ---------------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any] | str | os.PathLike[str]) -> list[ResourceDef]:
        """Create (or replace) a CRD from a manifest dict or file; returns its served versions."""
        manifest = load_crd(crd) if isinstance(crd, str | os.PathLike) else crd
        body = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", **manifest}
        self.put_object(*CRD_GVR, body)
        spec = body["spec"]
        return [
            rdef
            for v in spec["versions"]
            if (rdef := self.store.resolve(spec["group"], v["name"], spec["names"]["plural"])) is not None
        ]

    def register_resource(self, rdef: ResourceDef) -> None:
        """Serve one more built-in resource (stored without schema validation)."""
        self.store.register(rdef)

    def ensure_namespace(self, name: str) -> JSON:
        existing = self.get("", "v1", "namespaces", None, name)
        if existing is not None:
            return existing
        return self.put_object("", "v1", "namespaces", {"metadata": {"name": name}})

    # -- direct object access (no HTTP) ------------------------------------------------------

    def _rdef(self, group: str, version: str, plural: str) -> ResourceDef:
        return self.store.require(group, version, plural)

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of the object, or None if absent."""
        try:
            return clone(self.store.get(self._rdef(group, version, plural), namespace, name))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def objects(
        self, group: str, version: str, plural: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[JSON]:
        items, _ = self.store.list_objects(
            self._rdef(group, version, plural), namespace, parse_label_selector(label_selector)
        )
        return [clone(item) for item in items]

    def put_object(
        self, group: str, version: str, plural: str, obj: Mapping[str, Any], *, subresource: str | None = None
    ) -> JSON:
        """Create or replace an object as another controller would (validation applies).

        Without ``metadata.resourceVersion`` the replace is unconditional; with
        ``subresource="status"`` only the status is written.
        """
        rdef = self._rdef(group, version, plural)
        body = {"apiVersion": rdef.api_version, "kind": rdef.kind, **clone(obj)}
        meta = body.setdefault("metadata", {})
        namespace, name = meta.get("namespace"), meta.get("name")
        with self.store.lock:
            current = self.get(group, version, plural, namespace, name) if name else None
            if current is None:
                current = self.store.create(rdef, namespace, body).obj
                if subresource != "status":
                    return clone(current)
            current_meta = current["metadata"]
            body["metadata"] = {
                **meta,
                "name": current_meta["name"],
                "resourceVersion": (meta.get("resourceVersion") or current_meta["resourceVersion"]),
            }
            result = self.store.replace(rdef, namespace, str(current_meta["name"]), body, subresource=subresource)
            return clone(result.obj)

    def patch_object(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> JSON:
        """Patch an object (merge patch by default), e.g. a RayService's status."""
        rdef = self._rdef(group, version, plural)
        result = self.store.patch(rdef, namespace, name, content_type, patch, subresource=subresource)
        return clone(result.obj)

    def delete(
        self, group: str, version: str, plural: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> bool:
        """Delete as a client would (finalizers and garbage collection apply); False if absent."""
        try:
            self.store.delete(self._rdef(group, version, plural), namespace, name, propagation=propagation)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self) -> None:
        """Drop the watch history: watches resuming from older versions get 410 Gone."""
        self.store.compact()

    # -- traffic -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request served so far, in arrival order."""
        return self._log.snapshot()

    def writes(self, *, changed: bool | None = None, user_agent: str | None = None) -> list[RequestRecord]:
        """Write requests (create/update/patch/delete), optionally only (non-)changing ones."""
        return [
            r
            for r in self.requests
            if r.is_write
            and (changed is None or (r.changed == changed and (r.status or 0) < 400))
            and (user_agent is None or r.user_agent.startswith(user_agent))
        ]

    def verbs_used(self, *, user_agent: str | None = None) -> set[tuple[str, str, str, str]]:
        """Distinct ``(verb, group, resource, subresource)`` requested (e.g. by ``"kopf/"``)."""
        return {
            rule
            for r in self.requests
            if (user_agent is None or r.user_agent.startswith(user_agent)) and (rule := r.rbac) is not None
        }

    def clear_log(self) -> None:
        self._log.clear()

    # -- waiting -----------------------------------------------------------------------------

    @staticmethod
    def wait_until(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
        """Poll ``condition`` (from a sync test) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)
