"""The emulator's object store: apiserver write semantics over an in-memory, versioned map.

Everything here is synchronous and guarded by one re-entrant lock, so tests may call it from
any thread while the HTTP server runs on its own event loop; watchers learn about commits
through listener callbacks (the HTTP layer turns them into loop wake-ups).
"""

from __future__ import annotations

import collections
import datetime
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer

from llmdeploy.testing._kube_schema import FieldError
from llmdeploy.testing._kube_types import (
    CRD_KEY,
    JSON,
    NAMESPACE_KEY,
    ApiError,
    FieldRequirement,
    LabelRequirement,
    ResourceDef,
    StorageKey,
    bad_request,
    clone,
    core_resources,
    get_path,
    merge_patch,
    meta_errors,
    name_errors,
    resource_defs_from_crd,
    set_path,
    version_priority,
)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_IMMUTABLE_META = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
ObjKey = tuple[str, str]  # (namespace or "", name)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    skey: StorageKey
    namespace: str
    name: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON  # committed state; never mutated after the commit
    prev: JSON | None


@dataclass(frozen=True)
class WriteResult:
    obj: JSON
    changed: bool  # whether stored state changed (no-op writes leave resourceVersion alone)
    removed: bool = False  # whether the object left the store (DELETE answers 200, else 202)


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(ref.get("uid")) for ref in refs if isinstance(ref, Mapping) and ref.get("uid")}


def _content(obj: Mapping[str, Any], rdef: ResourceDef) -> JSON:
    """What generation tracks: everything but metadata (and status, if it is a subresource)."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rdef.status_subresource else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _comparable(obj: Mapping[str, Any]) -> JSON:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


class Store:
    """Objects of every served resource, one global resourceVersion, and a watch history."""

    def __init__(self, *, history_limit: int = 10_000, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self._rv = 0
        self._defs: dict[tuple[str, str, str], ResourceDef] = {}
        self._objects: dict[StorageKey, dict[ObjKey, JSON]] = {}
        self._uids: dict[str, tuple[StorageKey, str, str]] = {}
        self._dependents: dict[str, set[tuple[StorageKey, str, str]]] = {}
        self._pending: set[tuple[StorageKey, str, str]] = set()  # waiting to finish deletion
        self._crd_defs: dict[str, list[tuple[str, str, str]]] = {}
        self._history: collections.deque[WatchEvent] = collections.deque()
        self._history_limit = history_limit
        self._compacted_rv = 0
        self._listeners: list[Callable[[], None]] = []
        self._random = random.Random(seed)
        for rdef in core_resources():
            self.register(rdef)

    # -- resources ---------------------------------------------------------------------------

    def register(self, rdef: ResourceDef) -> None:
        with self.lock:
            self._defs[(rdef.group, rdef.version, rdef.plural)] = rdef
            self._objects.setdefault(rdef.skey, {})

    def resolve(self, group: str, version: str, plural: str) -> ResourceDef | None:
        with self.lock:
            return self._defs.get((group, version, plural))

    def require(self, group: str, version: str, plural: str) -> ResourceDef:
        rdef = self.resolve(group, version, plural)
        if rdef is None:
            raise ApiError(
                404, "NotFound", "the server could not find the requested resource", {"group": group, "kind": plural}
            )
        return rdef

    def resources(self) -> list[ResourceDef]:
        with self.lock:
            return list(self._defs.values())

    def group_versions(self) -> dict[str, list[str]]:
        """Each API group's versions, preferred (highest-priority) version first."""
        groups: dict[str, set[str]] = {}
        for rdef in self.resources():
            groups.setdefault(rdef.group, set()).add(rdef.version)
        return {g: sorted(vs, key=version_priority) for g, vs in groups.items()}

    def add_listener(self, listener: Callable[[], None]) -> None:
        with self.lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- reads -------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    @staticmethod
    def present(obj: JSON, rdef: ResourceDef) -> JSON:
        """The stored object as served at the requested version (no conversion, new apiVersion)."""
        return {**obj, "apiVersion": rdef.api_version}

    def _key(self, rdef: ResourceDef, namespace: str | None, name: str) -> ObjKey:
        return ((namespace or "") if rdef.namespaced else "", name)

    def get(self, rdef: ResourceDef, namespace: str | None, name: str) -> JSON:
        with self.lock:
            obj = self._objects[rdef.skey].get(self._key(rdef, namespace, name))
            if obj is None:
                raise rdef.not_found(name)
            return self.present(obj, rdef)

    def list_objects(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        labels: list[LabelRequirement] | None = None,
        fields: list[FieldRequirement] | None = None,
    ) -> tuple[list[JSON], int]:
        """Matching objects in etcd key order, and the resourceVersion they are consistent at."""
        with self.lock:
            items = [
                self.present(obj, rdef)
                for (ns, _), obj in sorted(self._objects[rdef.skey].items())
                if not (rdef.namespaced and namespace and ns != namespace)
            ]
            items = [obj for obj in items if self.matches(obj, labels, fields)]
            return items, self._rv

    @staticmethod
    def matches(
        obj: Mapping[str, Any], labels: list[LabelRequirement] | None, fields: list[FieldRequirement] | None
    ) -> bool:
        obj_labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req.matches(obj_labels) for req in labels or ()) and all(req.matches(obj) for req in fields or ())

    def events_since(self, rv: int) -> tuple[list[WatchEvent], int]:
        """Committed events after ``rv``, and the resourceVersion they bring a watcher up to."""
        with self.lock:
            if rv < self._compacted_rv:
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted_rv + 1})")
            events = []
            for event in reversed(self._history):
                if event.rv <= rv:
                    break
                events.append(event)
            events.reverse()
            return events, self._rv

    def compact(self) -> None:
        """Forget the whole watch history (as etcd compaction does); old versions become 410."""
        with self.lock:
            self._history.clear()
            self._compacted_rv = self._rv

    def namespace_exists(self, name: str) -> bool:
        with self.lock:
            return ("", name) in self._objects[NAMESPACE_KEY]

    # -- commits -----------------------------------------------------------------------------

    def _commit(self, skey: StorageKey, key: ObjKey, obj: JSON, etype: str) -> JSON:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        store = self._objects[skey]
        prev = store.get(key)
        full_key = (skey, *key)
        if prev is not None:
            for owner in _owner_uids(prev):
                self._dependents.get(owner, set()).discard(full_key)
        uid = str(obj["metadata"]["uid"])
        if etype == "DELETED":
            store.pop(key, None)
            self._uids.pop(uid, None)
            self._pending.discard(full_key)
        else:
            store[key] = obj
            self._uids[uid] = full_key
            for owner in _owner_uids(obj):
                self._dependents.setdefault(owner, set()).add(full_key)
        if len(self._history) >= self._history_limit:
            self._compacted_rv = self._history.popleft().rv
        self._history.append(WatchEvent(self._rv, skey, key[0], key[1], etype, obj, prev))
        for listener in list(self._listeners):
            listener()
        return obj

    def _remove(self, skey: StorageKey, key: ObjKey, last: JSON) -> JSON:
        obj = self._commit(skey, key, last, "DELETED")
        uid = str(obj["metadata"]["uid"])
        if skey == CRD_KEY:
            self._drop_crd(obj)
        self._collect_garbage(uid, "Background")
        self._finish_pending()
        return obj

    # -- create ------------------------------------------------------------------------------

    def create(self, rdef: ResourceDef, namespace: str | None, body: Any) -> WriteResult:
        with self.lock:
            obj = clone(body)
            self._check_identity(rdef, obj)
            meta = obj.setdefault("metadata", {})
            if rdef.namespaced:
                if not namespace:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                if meta.get("namespace") not in (None, "", namespace):
                    raise bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request"
                    )
                meta["namespace"] = namespace
                ns_obj = self._objects[NAMESPACE_KEY].get(("", namespace))
                if ns_obj is None:
                    raise ApiError(
                        404,
                        "NotFound",
                        f'namespaces "{namespace}" not found',
                        {"name": namespace, "kind": "namespaces"},
                    )
                if ns_obj["metadata"].get("deletionTimestamp"):
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'{rdef.qualified} "{meta.get("name", "")}" is forbidden: '
                        f"unable to create new content in namespace {namespace} "
                        "because it is being terminated",
                    )
            else:
                meta.pop("namespace", None)
            if meta.get("resourceVersion"):
                raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise rdef.invalid(
                        "",
                        [
                            FieldError(
                                "metadata.name",
                                "FieldValueRequired",
                                "Required value: name or generateName is required",
                            )
                        ],
                    )
                store = self._objects[rdef.skey]
                while True:
                    candidate = str(prefix) + "".join(self._random.choices(_NAME_CHARS, k=5))
                    if self._key(rdef, namespace, candidate) not in store:
                        break
                meta["name"] = candidate
            name = str(meta["name"])
            errors = name_errors(name, label=rdef.skey == NAMESPACE_KEY) + meta_errors(meta)
            if errors:
                raise rdef.invalid(name, errors)
            key = self._key(rdef, namespace, name)
            if key in self._objects[rdef.skey]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rdef.qualified} "{name}" already exists',
                    {"name": name, "group": rdef.group, "kind": rdef.plural},
                )
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if rdef.has_generation:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            if rdef.status_subresource and rdef.custom:
                obj.pop("status", None)
            if rdef.skey == NAMESPACE_KEY:
                obj["status"] = {"phase": "Active"}
            if rdef.skey == CRD_KEY:
                resource_defs_from_crd(obj)  # 422 for a malformed CRD, before anything is stored
                obj["status"] = self._crd_status(obj)
            self._apply_schema(rdef, obj, None)
            self._commit(rdef.skey, key, obj, "ADDED")
            if rdef.skey == CRD_KEY:
                self._sync_crd(obj)
            return WriteResult(self.present(obj, rdef), True)

    @staticmethod
    def _check_identity(rdef: ResourceDef, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise bad_request("the body of the request must be a JSON object")
        if not rdef.custom:  # typed decoding defaults the kind from the URL; unstructured does not
            obj.setdefault("kind", rdef.kind)
            obj.setdefault("apiVersion", rdef.api_version)
        if not obj.get("kind"):
            raise bad_request("Object 'Kind' is missing in the request body")
        if obj["kind"] != rdef.kind:
            raise bad_request(f"the kind of the object ({obj['kind']}) does not match the resource ({rdef.kind})")
        if obj.get("apiVersion") != rdef.api_version:
            raise bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not "
                f"match the expected API version ({rdef.api_version})"
            )
        if not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")

    def _apply_schema(self, rdef: ResourceDef, obj: JSON, old: JSON | None) -> None:
        if rdef.schema is None:
            return
        rdef.schema.prune(obj)
        rdef.schema.default(obj)
        errors = rdef.schema.validate(obj, old)
        if errors:
            raise rdef.invalid(str(obj["metadata"].get("name", "")), errors)

    # -- update (PUT, PATCH, status, scale) --------------------------------------------------

    def replace(
        self, rdef: ResourceDef, namespace: str | None, name: str, body: Any, *, subresource: str | None = None
    ) -> WriteResult:
        """PUT: replace the object (or only its status with ``subresource='status'``)."""
        with self.lock:
            old = self.get(rdef, namespace, name)
            candidate = clone(body)
            self._check_identity(rdef, candidate)
            return self._update(rdef, old, candidate, subresource=subresource, require_rv=rdef.custom)

    def patch(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
    ) -> WriteResult:
        with self.lock:
            old = self.get(rdef, namespace, name)
            result = self._apply_patch(rdef, clone(old), content_type, patch)
            if isinstance(result, dict) and "kind" not in result:
                result["kind"] = rdef.kind  # a patch removing kind keeps the resource's kind
            self._check_identity(rdef, result)
            return self._update(rdef, old, result, subresource=subresource, require_rv=False)

    @staticmethod
    def _apply_patch(
        rdef: ResourceDef, current: Any, content_type: str, patch: Any, strategic: bool | None = None
    ) -> Any:
        """Apply a patch; strategic merge is refused for custom resources, as the apiserver does."""
        strategic = (not rdef.custom) if strategic is None else strategic
        if content_type == JSON_PATCH:
            if not isinstance(patch, list):
                raise bad_request("a JSON patch must be a list of operations")
            try:
                return jsonpatch.apply_patch(current, patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: testing value failed: {exc}",
                ) from exc
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise ApiError(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
                ) from exc
        if content_type == MERGE_PATCH or (content_type == STRATEGIC_PATCH and strategic):
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            return merge_patch(current, patch)
        accepted = "application/json-patch+json, application/merge-patch+json" + (
            ", application/strategic-merge-patch+json" if strategic else ""
        )
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {accepted}",
        )

    def _update(
        self, rdef: ResourceDef, old: JSON, new: JSON, *, subresource: str | None, require_rv: bool
    ) -> WriteResult:
        old_meta = old["metadata"]
        name = str(old_meta["name"])
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        for field in ("name", "namespace"):
            if meta.get(field) not in (None, "", old_meta.get(field)):
                raise bad_request(
                    f"the {field} of the object ({meta.get(field)}) does not "
                    f"match the {field} on the URL ({old_meta.get(field)})"
                )
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise rdef.conflict(
                name,
                f"Precondition failed: UID in precondition: {meta.get('uid')}, UID in object meta: {old_meta['uid']}",
            )
        version = meta.get("resourceVersion")
        if version not in (None, "") and version != old_meta["resourceVersion"]:
            raise rdef.conflict(name)
        if require_rv and version in (None, ""):
            raise rdef.invalid(
                name,
                [
                    FieldError(
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        for field in _IMMUTABLE_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if subresource == "status":
            result = clone(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            new, meta = result, result["metadata"]
        elif rdef.status_subresource:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
            if added:
                raise rdef.invalid(
                    name,
                    [
                        FieldError(
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            f"Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {added}",
                        )
                    ],
                )
        errors = meta_errors(meta)
        if errors:
            raise rdef.invalid(name, errors)
        if rdef.skey == CRD_KEY:
            resource_defs_from_crd(new)
        new["apiVersion"], new["kind"] = rdef.api_version, rdef.kind
        self._apply_schema(rdef, new, old)
        if rdef.has_generation and _content(new, rdef) != _content(old, rdef):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if _comparable(new) == _comparable(old):
            return WriteResult(old, False)
        key = self._key(rdef, old_meta.get("namespace"), name)
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not (rdef.skey == NAMESPACE_KEY and self._namespace_has_content(name))
        ):
            return WriteResult(self.present(self._remove(rdef.skey, key, new), rdef), True, True)
        self._commit(rdef.skey, key, new, "MODIFIED")
        if rdef.skey == CRD_KEY:
            self._sync_crd(new)
        self._finish_pending()
        return WriteResult(self.present(new, rdef), True)

    # -- scale subresource -------------------------------------------------------------------

    def get_scale(self, rdef: ResourceDef, namespace: str | None, name: str) -> JSON:
        with self.lock:
            return self._scale_of(rdef, self.get(rdef, namespace, name))

    @staticmethod
    def _scale_of(rdef: ResourceDef, obj: JSON) -> JSON:
        assert rdef.scale is not None
        meta = obj["metadata"]
        scale_meta = {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        }
        status: JSON = {"replicas": get_path(obj, rdef.scale.status_replicas_path) or 0}
        if rdef.scale.label_selector_path:
            selector = get_path(obj, rdef.scale.label_selector_path)
            if selector is not None:
                status["selector"] = selector
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": scale_meta,
            "spec": {"replicas": get_path(obj, rdef.scale.spec_replicas_path) or 0},
            "status": status,
        }

    def update_scale(
        self, rdef: ResourceDef, namespace: str | None, name: str, content_type: str | None, body: Any
    ) -> WriteResult:
        """PUT (``content_type=None``) or PATCH the Scale; writes spec replicas to the object."""
        with self.lock:
            assert rdef.scale is not None
            old = self.get(rdef, namespace, name)
            scale = self._scale_of(rdef, old)
            if content_type is None:
                if not isinstance(body, dict):
                    raise bad_request("the body of the request must be a JSON object")
                new_scale = body
            else:
                new_scale = self._apply_patch(rdef, scale, content_type, body, strategic=True)
            version = (new_scale.get("metadata") or {}).get("resourceVersion")
            if version not in (None, "") and version != old["metadata"]["resourceVersion"]:
                raise rdef.conflict(name)
            replicas = (new_scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(
                    422,
                    "Invalid",
                    f'Scale.autoscaling "{name}" is invalid: '
                    f"spec.replicas: Invalid value: {replicas!r}: must be greater "
                    "than or equal to 0",
                )
            candidate = clone(old)
            set_path(candidate, rdef.scale.spec_replicas_path, replicas)
            result = self._update(rdef, old, candidate, subresource=None, require_rv=False)
            return WriteResult(self._scale_of(rdef, result.obj), result.changed)

    # -- delete and garbage collection -------------------------------------------------------

    def delete(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> WriteResult:
        with self.lock:
            obj = self.get(rdef, namespace, name)
            meta = obj["metadata"]
            for field in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field)
                if wanted and wanted != meta.get(field):
                    raise rdef.conflict(
                        name,
                        f"Precondition failed: {field} in precondition: "
                        f"{wanted}, {field} in object meta: {meta.get(field)}",
                    )
            if propagation not in (None, "Background", "Foreground", "Orphan"):
                raise bad_request(f"unsupported propagationPolicy: {propagation}")
            result = self._delete(rdef.skey, self._key(rdef, namespace, name), propagation or "Background")
            return WriteResult(self.present(result.obj, rdef), result.changed, result.removed)

    def _delete(self, skey: StorageKey, key: ObjKey, propagation: str) -> WriteResult:
        obj = self._objects[skey][key]
        meta = obj["metadata"]
        uid = str(meta["uid"])
        if propagation == "Orphan":
            self._orphan(uid)
        if meta.get("deletionTimestamp"):
            return WriteResult(obj, False)
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and self._dependents.get(uid):
            finalizers.append("foregroundDeletion")
        namespace_busy = skey == NAMESPACE_KEY and self._namespace_has_content(key[1])
        if not finalizers and not namespace_busy:
            return WriteResult(self._remove(skey, key, clone(obj)), True, True)
        new = clone(obj)
        new_meta = new["metadata"]
        new_meta["deletionTimestamp"] = now()
        new_meta["deletionGracePeriodSeconds"] = 0
        if finalizers:
            new_meta["finalizers"] = finalizers
        if "generation" in new_meta:
            new_meta["generation"] = int(new_meta["generation"]) + 1
        if skey == NAMESPACE_KEY:
            new["status"] = {"phase": "Terminating"}
        self._commit(skey, key, new, "MODIFIED")
        self._pending.add((skey, *key))
        if propagation == "Foreground":
            self._collect_garbage(uid, "Foreground")
        if skey == NAMESPACE_KEY:
            for content_skey, objects in list(self._objects.items()):
                for content_key in [k for k in objects if k[0] == key[1]]:
                    if content_key in self._objects[content_skey]:
                        self._delete(content_skey, content_key, "Background")
        self._finish_pending()
        current = self._objects[skey].get(key)
        return WriteResult(current if current is not None else new, True, current is None)

    def _namespace_has_content(self, namespace: str) -> bool:
        return any(
            ns == namespace for skey, objects in self._objects.items() if skey != NAMESPACE_KEY for ns, _ in objects
        )

    def _orphan(self, owner_uid: str) -> None:
        for skey, ns, name in list(self._dependents.get(owner_uid, ())):
            obj = clone(self._objects[skey][(ns, name)])
            refs = obj["metadata"].get("ownerReferences") or []
            obj["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
            self._commit(skey, (ns, name), obj, "MODIFIED")

    def _collect_garbage(self, owner_uid: str, propagation: str) -> None:
        """Delete dependents whose owners are all gone; drop dangling references otherwise."""
        for skey, ns, name in list(self._dependents.get(owner_uid, ())):
            obj = self._objects.get(skey, {}).get((ns, name))
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            others = [r for r in refs if r.get("uid") != owner_uid and r.get("uid") in self._uids]
            if others:  # other owners still hold it: only the reference goes (as the real GC)
                new = clone(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                self._commit(skey, (ns, name), new, "MODIFIED")
            elif not others:
                self._delete(skey, (ns, name), propagation)

    def _finish_pending(self) -> None:
        """Complete foreground deletions and namespace terminations whose waits are over."""
        progress = True
        while progress:
            progress = False
            for skey, ns, name in sorted(self._pending):
                obj = self._objects.get(skey, {}).get((ns, name))
                if obj is None:
                    self._pending.discard((skey, ns, name))
                    continue
                meta = obj["metadata"]
                finalizers = list(meta.get("finalizers") or [])
                if "foregroundDeletion" in finalizers and not self._dependents.get(meta["uid"]):
                    new = clone(obj)
                    finalizers.remove("foregroundDeletion")
                    new["metadata"]["finalizers"] = finalizers
                    if not finalizers:
                        del new["metadata"]["finalizers"]
                        if skey != NAMESPACE_KEY or not self._namespace_has_content(name):
                            self._remove(skey, (ns, name), new)
                            progress = True
                            break
                    self._commit(skey, (ns, name), new, "MODIFIED")
                    progress = True
                    break
                if skey == NAMESPACE_KEY and not finalizers and not self._namespace_has_content(name):
                    self._remove(skey, (ns, name), clone(obj))
                    progress = True
                    break

    # -- CRDs --------------------------------------------------------------------------------

    @staticmethod
    def _crd_status(crd: JSON) -> JSON:
        spec = crd["spec"]
        storage = [v["name"] for v in spec["versions"] if v.get("storage")]
        conditions = [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now()}
            for t, r, m in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
        return {"acceptedNames": dict(spec["names"]), "conditions": conditions, "storedVersions": storage}

    def _sync_crd(self, crd: JSON) -> None:
        defs = resource_defs_from_crd(crd)
        name = str(crd["metadata"]["name"])
        for gvp in self._crd_defs.pop(name, []):
            self._defs.pop(gvp, None)
        for rdef in defs:
            self.register(rdef)
        self._crd_defs[name] = [(d.group, d.version, d.plural) for d in defs]

    def _drop_crd(self, crd: JSON) -> None:
        spec = crd.get("spec") or {}
        skey = (str(spec.get("group")), str((spec.get("names") or {}).get("plural")))
        for gvp in self._crd_defs.pop(str(crd["metadata"]["name"]), []):
            self._defs.pop(gvp, None)
        for key, obj in list(self._objects.get(skey, {}).items()):
            self._remove(skey, key, clone(obj))
        self._objects.pop(skey, None)
