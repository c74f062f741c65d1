"""The HTTP face of the emulator: a kmock handler that routes Kubernetes API calls to the store.

kmock supplies the aiohttp server, request parsing/recording, the ``handler[...] << payload``
DSL for test-specific overrides (those win over the emulation) and the Status rendering of
crashes. Routing, discovery, list/watch and the write verbs are implemented here because
kmock 0.8's emulator cannot be extended cleanly for them (see ``kubeapi`` for the list).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import rendering  # StreamingError/ReactionMismatchError are not exported

from llmdeploy.testing._kube_store import Store, WatchEvent
from llmdeploy.testing._kube_types import (
    JSON,
    ApiError,
    FieldRequirement,
    LabelRequirement,
    ResourceDef,
    bad_request,
    parse_field_selector,
    parse_label_selector,
)
from llmdeploy.testing.kube_faults import WRITE_VERBS, FaultPlan

_TRUE = ("true", "1", "yes")
WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED")


@dataclass
class RequestRecord:
    """One request as the emulator saw it; ``verb`` is the RBAC verb (None for discovery)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    user_agent: str
    verb: str | None = None
    group: str | None = None
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: int | None = None  # None while a watch is still being set up
    changed: bool = False  # whether stored state changed because of this request
    fault: str | None = None  # the injected fault, if any
    drop_after: float | None = field(default=None, repr=False)

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def rbac(self) -> tuple[str, str, str, str] | None:
        """``(verb, group, resource, subresource)`` as an RBAC rule would name it."""
        if self.verb is None or self.resource is None:
            return None
        return (self.verb, self.group or "", self.resource, self.subresource or "")


class TrafficLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


@dataclass(frozen=True)
class Route:
    rdef: ResourceDef
    namespace: str | None
    name: str | None
    subresource: str | None


def route(store: Store, path: str) -> Route | None:
    """Map a resource URL to its route; None for non-resource URLs; 404 for unknown resources."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        inner = store.resolve(group, version, rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    rdef = store.require(group, version, rest[0])
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if (
        len(rest) > 3
        or (subresource and subresource not in rdef.subresources)
        or (rdef.namespaced and name is not None and namespace is None)
    ):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return Route(rdef, namespace, name, subresource)


def _verb(method: str, route: Route, watch: bool) -> str | None:
    if method == "GET":
        return "watch" if watch else ("list" if route.name is None else "get")
    if route.name is None:
        return {"POST": "create", "DELETE": "deletecollection"}.get(method)
    return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)


def _fault_error(status: int, record: RequestRecord, retry_after: int) -> ApiError:
    if status == 409:
        return ApiError(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {record.resource} "
            f'"{record.name or ""}": the object has been modified; please apply '
            "your changes to the latest version and try again (injected)",
        )
    if status == 429:
        return ApiError(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            {"retryAfterSeconds": retry_after},
            {"Retry-After": str(retry_after)},
        )
    if status == 503:
        return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request (injected)")
    return ApiError(status, "InternalError", "Internal error occurred: injected fault")


class KubeHandler(kmock.KubernetesScaffold):
    """kmock handler serving the emulated Kubernetes API from a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        log: TrafficLog,
        *,
        token: str | None,
        faults: Callable[[], FaultPlan | None],
        bookmark_interval: float,
        server_version: tuple[str, str],
    ) -> None:
        super().__init__()
        self.store = store
        self.log = log
        self.token = token
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.server_version = server_version
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle: commits from any thread wake the watchers on this loop -------------------

    def _on_commit(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def __aenter__(self) -> KubeHandler:
        await super().__aenter__()
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._on_commit)
        return self

    def begin_close(self) -> None:
        self.store.remove_listener(self._on_commit)
        self.closing.set()
        self._wake()

    # -- request entry -----------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        record = RequestRecord(
            raw.method, raw.path, dict(raw.query), raw.headers.get("Content-Type"), raw.headers.get("User-Agent", "")
        )
        self.log.append(record)
        response: aiohttp.web.StreamResponse
        try:
            response = await self._dispatch(raw, body, record)
        except ApiError as exc:
            response = aiohttp.web.json_response(exc.status(), status=exc.code, headers=exc.headers)
        except kmock.KubernetesError as exc:  # kmock's own answers, e.g. an unknown endpoint
            response = await self._render_error(exc)
        except Exception as exc:  # a crash of the emulator or of a test's reaction
            if self._errors:
                self._errors[-1].append(exc)
            response = await self._render_error(exc)
        if record.status is None:
            record.status = response.status
        return response

    async def _dispatch(
        self, raw: aiohttp.web.BaseRequest, body: bytes, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        if self.token is not None and raw.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        target = route(self.store, raw.path)
        if target is not None:
            watch = record.query.get("watch", "").lower() in _TRUE
            record.verb = _verb(raw.method, target, watch)
            record.group, record.resource = target.rdef.group, target.rdef.plural
            record.subresource, record.namespace = target.subresource, target.namespace
            record.name = target.name
        plan = self.faults()
        decision = plan.decide(verb=record.verb, user_agent=record.user_agent) if plan else None
        if decision is not None:
            record.fault, record.drop_after = decision.label, decision.drop_after
            if decision.delay:
                await asyncio.sleep(decision.delay)
            if decision.status is not None:
                assert plan is not None
                raise _fault_error(decision.status, record, plan.retry_after_seconds)
        try:
            request = await rendering.Request._parse(raw, id=len(self._requests))
        except Exception:  # kmock 0.8 cannot parse e.g. /api/v1/namespaces; keep the raw facts
            request = kmock.Request(
                id=len(self._requests),
                method=raw.method,
                url=raw.url,
                params=dict(raw.query),
                headers=dict(raw.headers),
                body=body,
                text=body.decode(errors="replace"),
                raw_request=raw,
            )
        self._requests.append(request)
        try:
            return await self._handle_with(request, raw, body, record, target)
        except rendering.StreamingError as exc:  # a test reaction failed mid-stream
            stream: aiohttp.web.StreamResponse = exc.args[0]
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            if self._errors:
                self._errors[-1].append(cause)
            await self._stream_error(cause, stream)
            await stream.write_eof()
            return stream

    async def _handle_with(
        self,
        request: kmock.Request,
        raw: aiohttp.web.BaseRequest,
        body: bytes,
        record: RequestRecord,
        target: Route | None,
    ) -> aiohttp.web.StreamResponse:
        # Reactions a test declared (``api.handler[...] << ...``) win over the emulation.
        priorities = [p.priorities for p in self._payloads]
        width = max((len(p) for p in priorities), default=0)
        order = sorted(
            range(len(priorities)), key=lambda i: tuple(-p for p in priorities[i]) + (0,) * (width - len(priorities[i]))
        )
        for index in order:
            payload = self._payloads[index]
            if -math.inf in payload.priorities:
                continue  # kmock's own fallbacks come after the emulation
            if request in payload._source and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        if target is not None:
            return await self._serve(raw, body, record, target)
        discovery = self._discovery(raw.method, raw.path)
        if discovery is not None:
            return aiohttp.web.json_response(discovery)
        return await super()._handle(request)

    # -- discovery ---------------------------------------------------------------------------

    def _discovery(self, method: str, path: str) -> JSON | None:
        if method != "GET":
            return None
        parts = [p for p in path.split("/") if p]
        groups = self.store.group_versions()
        if parts == ["version"]:
            major, minor = self.server_version
            return {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{major}.{minor}.0-emulator",
                "gitCommit": "",
                "gitTreeState": "clean",
                "buildDate": "",
                "goVersion": "",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, vs) for g, vs in sorted(groups.items()) if g],
            }
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in groups or not parts[1]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], groups[parts[1]])}
        if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            if version not in groups.get(group, []):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": [
                    entry
                    for rdef in self.store.resources()
                    if (rdef.group, rdef.version) == (group, version)
                    for entry in _resource_entries(rdef)
                ],
            }
        if parts[:1] == ["openapi"]:
            return self._openapi(parts[1:])
        return None

    @staticmethod
    def _group(group: str, versions: list[str]) -> JSON:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _openapi(self, parts: list[str]) -> JSON:
        """OpenAPI v3 (index and per group-version) and v2, with every CRD version's schema."""
        defs = [r for r in self.store.resources() if r.schema is not None]

        def component(rdef: ResourceDef) -> str:
            return ".".join([*reversed(rdef.group.split(".")), rdef.version, rdef.kind])

        if parts == ["v2"]:
            return {
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": "emulator"},
                "paths": {},
                "definitions": {
                    component(r): {
                        **r.schema.openapi,
                        "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.kind}],
                    }
                    for r in defs
                    if r.schema is not None
                },
            }
        groups = self.store.group_versions()
        prefixes = {(g, v): (f"apis/{g}/{v}" if g else f"api/{v}") for g, vs in groups.items() for v in vs}
        if parts == ["v3"]:
            return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}"} for p in sorted(prefixes.values())}}
        wanted = "/".join(parts[1:])
        for (group, version), prefix in prefixes.items():
            if parts[:1] == ["v3"] and wanted == prefix:
                schemas = {
                    component(r): r.schema.openapi
                    for r in defs
                    if (r.group, r.version) == (group, version) and r.schema is not None
                }
                return {
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": version},
                    "paths": {},
                    "components": {"schemas": schemas},
                }
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # -- resource verbs ----------------------------------------------------------------------

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, body: bytes, record: RequestRecord, target: Route
    ) -> aiohttp.web.StreamResponse:
        rdef, ns, name, sub = target.rdef, target.namespace, target.name, target.subresource
        store, verb, query = self.store, record.verb, record.query
        status = 200
        if verb == "list":
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), rdef)
            items, rv = store.list_objects(rdef, ns, labels, fields)
            result: JSON = {
                "kind": rdef.list_kind or f"{rdef.kind}List",
                "apiVersion": rdef.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
            _paginate(result, query.get("limit"), query.get("continue"))
        elif verb == "watch":
            return await self._watch(raw, record, target)
        elif verb == "get" and name is not None:
            result = store.get_scale(rdef, ns, name) if sub == "scale" else store.get(rdef, ns, name)
        elif verb == "create":
            write = store.create(rdef, ns, _json_body(body))
            result, status, record.changed = write.obj, 201, write.changed
        elif verb in ("update", "patch") and name is not None:
            content_type = raw.content_type if verb == "patch" else None
            payload = _json_body(body)
            if sub == "scale":
                write = store.update_scale(rdef, ns, name, content_type, payload)
            elif content_type is None:
                write = store.replace(rdef, ns, name, payload, subresource=sub)
            else:
                write = store.patch(rdef, ns, name, content_type, payload, subresource=sub)
            result, record.changed = write.obj, write.changed
        elif verb == "delete" and name is not None and sub is None:
            options = _json_body(body) if body.strip() else {}
            options = options if isinstance(options, dict) else {}
            propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
            write = store.delete(rdef, ns, name, propagation=propagation, preconditions=options.get("preconditions"))
            result, record.changed = write.obj, write.changed
            status = 200 if write.removed else 202
            if write.removed and not rdef.custom:  # built-in registries answer a Status
                meta = write.obj["metadata"]
                result = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": rdef.group, "kind": rdef.plural, "uid": meta.get("uid")},
                }
        elif verb == "deletecollection" and sub is None:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), rdef)
            items, _ = store.list_objects(rdef, ns, labels, fields)
            deleted = []
            for item in items:
                meta = item["metadata"]
                write = store.delete(
                    rdef, meta.get("namespace"), meta["name"], propagation=query.get("propagationPolicy")
                )
                record.changed = record.changed or write.changed
                deleted.append(write.obj)
            result = {
                "kind": rdef.list_kind or f"{rdef.kind}List",
                "apiVersion": rdef.api_version,
                "metadata": {"resourceVersion": str(store.resource_version)},
                "items": deleted,
            }
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return aiohttp.web.json_response(result, status=status)

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, record: RequestRecord, target: Route
    ) -> aiohttp.web.StreamResponse:
        rdef, query = target.rdef, record.query
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rdef)
        if target.name is not None:
            fields.append(FieldRequirement("metadata.name", False, target.name))
        timeout = _number(query.get("timeoutSeconds"), "timeoutSeconds")
        bookmarks = query.get("allowWatchBookmarks", "").lower() in _TRUE
        initial_bookmark = bookmarks and query.get("sendInitialEvents", "").lower() in _TRUE
        since = query.get("resourceVersion", "")
        expired: ApiError | None = None
        with self.store.lock:
            if since in ("", "0") or initial_bookmark:
                initial, cursor = self.store.list_objects(rdef, target.namespace, labels, fields)
            else:
                initial, cursor = [], int(_number(since, "resourceVersion") or 0)
                try:
                    self.store.events_since(cursor)
                except ApiError as exc:
                    expired = exc

        stream = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await stream.prepare(raw)
        record.status = 200
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else math.inf
        drop_at = started + record.drop_after if record.drop_after is not None else math.inf

        async def send(kind: str, obj: JSON) -> None:
            await stream.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def bookmark(rv: int, *, initial_end: bool = False) -> JSON:
            meta: JSON = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": rdef.kind, "apiVersion": rdef.api_version, "metadata": meta}

        try:
            if expired is not None:
                await send("ERROR", expired.status())
                await stream.write_eof()
                return stream
            for obj in initial:
                await send("ADDED", obj)
            if initial_bookmark:
                await send("BOOKMARK", bookmark(cursor, initial_end=True))
            last_sent = time.monotonic()
            while True:
                changed = self._changed
                try:
                    events, cursor_now = self.store.events_since(cursor)
                except ApiError as exc:
                    await send("ERROR", exc.status())
                    break
                for event in events:
                    out = _translate(event, rdef, target.namespace, labels, fields)
                    if out is not None:
                        await send(*out)
                        last_sent = time.monotonic()
                cursor = max(cursor, cursor_now)
                moment = time.monotonic()
                if self.closing.is_set() or moment >= deadline:
                    break
                if moment >= drop_at:
                    if raw.transport is not None:
                        raw.transport.abort()
                    return stream
                if bookmarks and moment - last_sent >= self.bookmark_interval:
                    await send("BOOKMARK", bookmark(cursor))
                    last_sent = moment
                wait = (
                    min(
                        deadline, drop_at, (last_sent + self.bookmark_interval) if bookmarks else math.inf, moment + 1.0
                    )
                    - moment
                )
                if raw.transport is None or raw.transport.is_closing():
                    return stream  # the client went away
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.001))
            await stream.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionError):
            pass  # the client disconnected
        return stream


def _translate(
    event: WatchEvent,
    rdef: ResourceDef,
    namespace: str | None,
    labels: list[LabelRequirement],
    fields: list[FieldRequirement],
) -> tuple[str, JSON] | None:
    """A store event as this watch sees it: selectors turn MODIFIED into ADDED/DELETED."""
    if event.skey != rdef.skey or (namespace and event.namespace != namespace):
        return None
    obj = Store.present(event.obj, rdef)
    now_in = Store.matches(obj, labels, fields)
    was_in = event.prev is not None and Store.matches(event.prev, labels, fields)
    if event.type == "MODIFIED":
        kind = ("MODIFIED" if was_in else "ADDED") if now_in else ("DELETED" if was_in else "")
    else:
        kind = event.type if now_in else ""
    return (kind, obj) if kind in WATCH_TYPES else None


def _resource_entries(rdef: ResourceDef) -> list[JSON]:
    main: JSON = {
        "name": rdef.plural,
        "singularName": rdef.singular or rdef.kind.lower(),
        "namespaced": rdef.namespaced,
        "kind": rdef.kind,
        "verbs": list(rdef.verbs),
    }
    if rdef.short_names:
        main["shortNames"] = list(rdef.short_names)
    if rdef.categories:
        main["categories"] = list(rdef.categories)
    entries = [main]
    if rdef.status_subresource:
        entries.append(
            {
                "name": f"{rdef.plural}/status",
                "singularName": "",
                "namespaced": rdef.namespaced,
                "kind": rdef.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    if rdef.scale is not None:
        entries.append(
            {
                "name": f"{rdef.plural}/scale",
                "singularName": "",
                "namespaced": rdef.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }
        )
    return entries


def _paginate(result: JSON, limit: str | None, token: str | None) -> None:
    """``limit``/``continue`` over the current state (not a consistent snapshot, unlike etcd)."""
    items: list[JSON] = result["items"]
    if token:
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))
        except ValueError:
            raise bad_request("invalid continue token") from None
        items = [i for i in items if [i["metadata"].get("namespace", ""), i["metadata"]["name"]] > after]
    count = int(_number(limit, "limit") or 0)
    if count > 0 and len(items) > count:
        last = items[count - 1]["metadata"]
        key = json.dumps([last.get("namespace", ""), last["name"]]).encode()
        result["metadata"]["continue"] = base64.urlsafe_b64encode(key).decode()
        result["metadata"]["remainingItemCount"] = len(items) - count
        items = items[:count]
    result["items"] = items


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError as exc:
        raise bad_request(f"the body of the request is not valid JSON: {exc}") from exc


def _number(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise bad_request(f"invalid {name}: {value!r}") from None
