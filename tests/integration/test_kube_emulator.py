"""The in-process Kubernetes API emulator behaves like kube-apiserver for what the operator uses.

Driven through the official ``kubernetes`` client, raw HTTP (urllib3/aiohttp) and, once, a real
kopf operator, so that a wrong answer from the emulator shows up as a failing client call.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import urllib3
from kubernetes import client, config, watch

from llmdeploy.testing.kubeapi import CEL_AVAILABLE, FaultPlan, KubeAPI, load_crd

pytestmark = pytest.mark.integration

RAYSERVICE_CRD = Path(__file__).resolve().parents[3] / "shared" / "kuberay" / "ray.io_rayservices.yaml"
WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "replicas": {"type": "integer", "minimum": 0, "default": 1},
                "tier": {"type": "string", "enum": ["small", "large"]},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "note": {"type": "string", "nullable": True},
                "owner": {
                    "type": "string",
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "owner is immutable"}],
                },
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.tier) || self.tier != 'large' || self.replicas >= 2",
                    "message": "large widgets need at least 2 replicas",
                }
            ],
        },
        "status": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "phase": {"type": "string", "enum": ["Pending", "Ready"]},
                "replicas": {"type": "integer"},
                "selector": {"type": "string"},
            },
        },
    },
}
WIDGETS: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
            "categories": ["all"],
        },
        "versions": [
            {
                "name": name,
                "served": True,
                "storage": name == "v1",
                "schema": {"openAPIV3Schema": WIDGET_SCHEMA},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
            }
            for name in ("v1beta1", "v1")
        ],
    },
}
GADGETS: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Cluster",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
W = ("example.com", "v1", "widgets")
CM = ("", "v1", "configmaps")


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"model": "m", **spec},
    }


def http(
    api: KubeAPI,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    pool = urllib3.PoolManager(retries=False)
    resp = pool.request(
        method,
        api.url + path,
        body=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": content_type, **(headers or {})},
        timeout=urllib3.Timeout(connect=2, read=10),
    )
    return resp.status, json.loads(resp.data) if resp.data else None, resp.headers


def watch_events(api: KubeAPI, path: str, **query: Any) -> Iterator[dict[str, Any]]:
    pool = urllib3.PoolManager(retries=False)
    url = f"{api.url}{path}?{urlencode({'watch': 'true', **query})}"
    resp = pool.request("GET", url, preload_content=False, timeout=urllib3.Timeout(connect=2, read=10))
    assert resp.status == 200
    try:
        for line in resp:
            if line.strip():
                yield json.loads(line)
    finally:
        resp.release_conn()


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI(crds=[WIDGETS, GADGETS], bookmark_interval=0.2) as emulator:
        yield emulator
        assert emulator.errors == []


@pytest.fixture
def kube(api: KubeAPI, tmp_path: Path) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
    )
    with client.ApiClient(configuration) as api_client:
        yield api_client


def status_of(exc: client.ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status" and body["code"] == exc.status
    return body


# -- server, discovery, kubeconfig -----------------------------------------------------------


async def test_async_start_serves_discovery() -> None:
    async with KubeAPI(crds=[WIDGETS]) as api, aiohttp.ClientSession(api.url) as session:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", api.url)
        async with session.get("/version") as resp:
            assert (await resp.json())["major"] == "1"
        async with session.get("/api") as resp:
            assert (await resp.json())["versions"] == ["v1"]
        async with session.get("/api/v1") as resp:
            core = {r["name"]: r for r in (await resp.json())["resources"]}
        assert {"namespaces", "events", "secrets", "services", "configmaps", "pods"} <= set(core)
        assert core["namespaces"]["namespaced"] is False and core["pods"]["namespaced"] is True
        assert "namespaces/status" in core
        async with session.get("/apis") as resp:
            groups = {g["name"]: g for g in (await resp.json())["groups"]}
        assert {"coordination.k8s.io", "events.k8s.io", "apiextensions.k8s.io", "example.com"} <= set(groups)
        assert groups["example.com"]["preferredVersion"]["version"] == "v1"
        assert [v["version"] for v in groups["example.com"]["versions"]] == ["v1", "v1beta1"]
        async with session.get("/apis/example.com/v1") as resp:
            listed = {r["name"]: r for r in (await resp.json())["resources"]}
        assert listed["widgets"]["kind"] == "Widget" and listed["widgets"]["shortNames"] == ["wd"]
        assert listed["widgets"]["singularName"] == "widget" and listed["widgets"]["namespaced"]
        assert "watch" in listed["widgets"]["verbs"]
        assert listed["widgets/status"]["verbs"] == ["get", "patch", "update"]
        assert listed["widgets/scale"]["kind"] == "Scale"
        async with session.get("/apis/coordination.k8s.io/v1") as resp:
            assert [r["name"] for r in (await resp.json())["resources"]] == ["leases"]
        async with session.get("/apis/nope.example.com/v1") as resp:
            assert resp.status == 404
        async with session.get("/openapi/v3/apis/example.com/v1") as resp:
            schemas = (await resp.json())["components"]["schemas"]
        assert "com.example.v1.Widget" in schemas
        assert api.errors == []


def test_token_kubeconfig_and_unauthorized(tmp_path: Path) -> None:
    with KubeAPI(token="s3cret") as api:
        assert http(api, "GET", "/api/v1/namespaces")[0] == 401
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(api.write_kubeconfig(tmp_path / "kc")), client_configuration=configuration
        )
        with client.ApiClient(configuration) as api_client:
            names = [n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items]
        assert names == ["default", "kube-public", "kube-system"]


def test_user_reactions_override_the_emulation(api: KubeAPI) -> None:
    api.handler["get /version"] << {"major": "9", "minor": "99"}
    api.handler["get /apis/example.com/v1/namespaces/default/widgets/w"] << 503
    api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "default"}})
    assert http(api, "GET", "/version")[1]["major"] == "9"
    assert http(api, "GET", "/apis/example.com/v1/namespaces/default/widgets/w")[0] == 503
    assert http(api, "GET", "/apis/example.com/v1/namespaces/default/widgets")[0] == 200
    code, body, _ = http(api, "GET", "/no/such/endpoint")
    assert code == 404 and body["kind"] == "Status"


# -- create / get / list ---------------------------------------------------------------------


def test_create_stamps_metadata_and_honours_generate_name(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    body = widget("")
    body["metadata"] = {"generateName": "w-"}
    created = custom.create_namespaced_custom_object(*W[:2], "default", W[2], body)
    meta = created["metadata"]
    assert re.fullmatch(r"w-[a-z0-9]{5}", meta["name"])
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert meta["generation"] == 1 and meta["namespace"] == "default"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert int(meta["resourceVersion"]) == api.resource_version
    again = custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("fixed"))
    assert int(again["metadata"]["resourceVersion"]) == int(meta["resourceVersion"]) + 1
    with pytest.raises(client.ApiException) as exists:
        custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("fixed"))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"
    with pytest.raises(client.ApiException) as missing:
        custom.get_namespaced_custom_object(*W[:2], "default", W[2], "nope")
    assert missing.value.status == 404
    assert status_of(missing.value)["message"] == 'widgets.example.com "nope" not found'
    with pytest.raises(client.ApiException) as no_ns:
        custom.create_namespaced_custom_object(*W[:2], "ghost", W[2], widget("x"))
    assert no_ns.value.status == 404
    fetched = custom.get_namespaced_custom_object("example.com", "v1beta1", "default", W[2], "fixed")
    assert fetched["apiVersion"] == "example.com/v1beta1"


def test_list_carries_resource_version_and_honours_selectors(kube: client.ApiClient, api: KubeAPI) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    for ns, name, labels in [
        ("default", "a", {"app": "x", "tier": "web"}),
        ("default", "b", {"app": "y"}),
        ("other", "c", {"app": "x"}),
        ("other", "d", {}),
    ]:
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )

    def names(**kwargs: Any) -> list[str]:
        return [i.metadata.name for i in core.list_config_map_for_all_namespaces(**kwargs).items]

    listing = core.list_namespaced_config_map("default")
    assert int(listing.metadata.resource_version) == api.resource_version
    assert [i.metadata.name for i in listing.items] == ["a", "b"]
    assert names() == ["a", "b", "c", "d"]
    assert names(label_selector="app=x") == ["a", "c"]
    assert names(label_selector="app==x,tier=web") == ["a"]
    assert names(label_selector="app!=x") == ["b", "d"]
    assert names(label_selector="app in (x, y)") == ["a", "b", "c"]
    assert names(label_selector="app notin (x)") == ["b", "d"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="!app") == ["d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.namespace=other,metadata.name!=c") == ["d"]
    assert http(api, "GET", "/api/v1/configmaps?labelSelector=app%20in%20(x")[0] == 400
    page = core.list_config_map_for_all_namespaces(limit=3)
    assert [i.metadata.name for i in page.items] == ["a", "b", "c"]
    assert page.metadata.remaining_item_count == 1
    rest = core.list_config_map_for_all_namespaces(limit=3, _continue=page.metadata._continue)
    assert [i.metadata.name for i in rest.items] == ["d"] and not rest.metadata._continue
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(*W[:2], "other", W[2], widget("w1"))
    everywhere = custom.list_cluster_custom_object(*W)
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [("other", "w1")]
    assert everywhere["kind"] == "WidgetList"
    assert http(api, "GET", "/apis/example.com/v1/widgets?fieldSelector=spec.model%3Dm")[0] == 400


# -- watch -----------------------------------------------------------------------------------


def test_watch_resumes_from_resource_version_and_expires(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("old"))
    since = custom.list_namespaced_custom_object(*W[:2], "default", W[2])["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "old", {"spec": {"replicas": 3}})
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("new"))
    custom.delete_namespaced_custom_object(*W[:2], "default", W[2], "old")
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object, *W[:2], "default", W[2], resource_version=since, timeout_seconds=1
    )
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in stream]
    assert seen == [("MODIFIED", "old"), ("ADDED", "new"), ("DELETED", "old")]

    started = time.monotonic()
    fresh = list(watch_events(api, "/apis/example.com/v1/namespaces/default/widgets", timeoutSeconds=1))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in fresh] == [("ADDED", "new")]
    assert 0.9 < time.monotonic() - started < 3

    api.compact()
    events = list(watch_events(api, "/apis/example.com/v1/widgets", resourceVersion=since))
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_history_limit_expires_old_versions() -> None:
    with KubeAPI(history_limit=5) as api:
        since = api.resource_version
        for i in range(3):
            api.put_object(*CM, {"metadata": {"name": f"c{i}", "namespace": "default"}})
        assert len(list(watch_events(api, "/api/v1/configmaps", resourceVersion=since, timeoutSeconds=0.2))) == 3
        for i in range(3, 6):
            api.put_object(*CM, {"metadata": {"name": f"c{i}", "namespace": "default"}})
        events = list(watch_events(api, "/api/v1/configmaps", resourceVersion=since))
        assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
        recent = api.resource_version - 2
        assert len(list(watch_events(api, "/api/v1/configmaps", resourceVersion=recent, timeoutSeconds=0.2))) == 2


def test_watch_has_no_gap_between_snapshot_and_live_events(api: KubeAPI) -> None:
    api.put_object(*CM, {"metadata": {"name": "counter", "namespace": "default"}, "data": {"n": "0"}})
    last = 300

    def writer() -> None:
        for i in range(1, last + 1):
            api.patch_object(*CM, "default", "counter", {"data": {"n": str(i)}})
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    api.wait_until(lambda: int(api.get(*CM, "default", "counter")["data"]["n"]) >= 50)  # type: ignore[index]
    versions, first = [], None
    for event in watch_events(
        api, "/api/v1/namespaces/default/configmaps", timeoutSeconds=10, fieldSelector="metadata.name=counter"
    ):
        first = first or event
        versions.append(int(event["object"]["metadata"]["resourceVersion"]))
        if event["object"]["data"]["n"] == str(last):
            break
    thread.join()
    assert first is not None and first["type"] == "ADDED"
    assert int(first["object"]["data"]["n"]) < last  # the snapshot was taken mid-stream
    assert versions == list(range(versions[0], versions[0] + len(versions)))  # no event lost


def test_watch_bookmarks_and_initial_events_end(api: KubeAPI) -> None:
    api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "default"}})
    events = list(
        watch_events(
            api,
            "/apis/example.com/v1/widgets",
            timeoutSeconds=1,
            allowWatchBookmarks="true",
            sendInitialEvents="true",
            resourceVersionMatch="NotOlderThan",
        )
    )
    assert [e["type"] for e in events[:2]] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert events[1]["object"]["metadata"]["resourceVersion"] == str(api.resource_version)
    assert "BOOKMARK" in [e["type"] for e in events[2:]]  # periodic ones (interval 0.2 s)


def test_watch_label_selector_turns_modifications_into_adds_and_deletes(api: KubeAPI) -> None:
    api.put_object(*CM, {"metadata": {"name": "x", "namespace": "default"}})
    since = api.resource_version
    api.patch_object(*CM, "default", "x", {"metadata": {"labels": {"pick": "yes"}}})
    api.patch_object(*CM, "default", "x", {"data": {"k": "v"}})
    api.patch_object(*CM, "default", "x", {"metadata": {"labels": {"pick": "no"}}})
    events = list(
        watch_events(api, "/api/v1/configmaps", resourceVersion=since, labelSelector="pick=yes", timeoutSeconds=0.5)
    )
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


# -- writes: patch flavours, PUT, no-ops -----------------------------------------------------


def test_patch_flavours_conflicts_and_unsupported(api: KubeAPI) -> None:
    api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "default"}})
    path = "/apis/example.com/v1/namespaces/default/widgets/w"
    rv = api.get(*W, "default", "w")["metadata"]["resourceVersion"]  # type: ignore[index]
    code, body, _ = http(api, "PATCH", path, {"spec": {"replicas": 2}}, "application/merge-patch+json")
    assert code == 200 and body["spec"]["replicas"] == 2 and body["metadata"]["resourceVersion"] != rv
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "replace", "path": "/spec/replicas", "value": 5},
    ]
    code, body, _ = http(api, "PATCH", path, ops, "application/json-patch+json")
    assert code == 422 and body["reason"] == "Invalid"
    assert api.get(*W, "default", "w")["spec"]["replicas"] == 2  # type: ignore[index]
    ops[0]["value"] = api.get(*W, "default", "w")["metadata"]["resourceVersion"]  # type: ignore[index]
    assert http(api, "PATCH", path, ops, "application/json-patch+json")[0] == 200
    stale = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "replace", "path": "/spec/replicas", "value": 7},
    ]
    code, body, _ = http(api, "PATCH", path, stale, "application/json-patch+json")
    assert code == 409 and body["reason"] == "Conflict"
    code, body, _ = http(api, "PATCH", path, {"metadata": {"resourceVersion": rv}}, "application/merge-patch+json")
    assert code == 409
    code, body, _ = http(api, "PATCH", path, {"spec": {"replicas": 1}}, "application/strategic-merge-patch+json")
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    api.put_object(*CM, {"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}})
    code, body, _ = http(
        api,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c",
        {"data": {"b": "2"}},
        "application/strategic-merge-patch+json",
    )
    assert code == 200 and body["data"] == {"a": "1", "b": "2"}
    assert api.get(*W, "default", "w")["spec"]["replicas"] == 5  # type: ignore[index]


def test_put_replaces_with_optimistic_concurrency(kube: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(kube)
    created = custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("w"))
    created["spec"]["model"] = "other"
    replaced = custom.replace_namespaced_custom_object(*W[:2], "default", W[2], "w", created)
    assert replaced["spec"]["model"] == "other" and replaced["metadata"]["generation"] == 2
    with pytest.raises(client.ApiException) as stale:
        custom.replace_namespaced_custom_object(*W[:2], "default", W[2], "w", created)
    assert stale.value.status == 409
    del replaced["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as unconditional:
        custom.replace_namespaced_custom_object(*W[:2], "default", W[2], "w", replaced)
    assert unconditional.value.status == 422
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "1"})
    )
    cm = core.replace_namespaced_config_map(
        "c", "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"b": "2"})
    )
    assert cm.data == {"b": "2"}  # built-in resources allow unconditional updates


def test_noop_writes_keep_resource_version_and_emit_nothing(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    created = custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("w"))
    rv = created["metadata"]["resourceVersion"]
    api.clear_log()
    same = custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "w", {"spec": {"model": "m"}})
    pruned = custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "w", {"spec": {"unknown": 1}})
    status_same = custom.patch_namespaced_custom_object_status(*W[:2], "default", W[2], "w", {"status": None})
    assert same["metadata"]["resourceVersion"] == rv == pruned["metadata"]["resourceVersion"]
    assert status_same["metadata"]["resourceVersion"] == rv
    assert api.resource_version == int(rv)
    assert len(api.writes(changed=False)) == 3 and api.writes(changed=True) == []
    custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "w", {"spec": {"model": "n"}})
    assert len(api.writes(changed=True)) == 1 and len(api.writes()) == 4
    events = list(watch_events(api, "/apis/example.com/v1/widgets", resourceVersion=rv, timeoutSeconds=0.5))
    assert [e["type"] for e in events] == ["MODIFIED"]


def test_generation_tracks_spec_only(kube: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("w"))

    def patch(body: dict[str, Any], status: bool = False) -> dict[str, Any]:
        fn = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        result: dict[str, Any] = fn(*W[:2], "default", W[2], "w", body)
        return result

    assert patch({"metadata": {"labels": {"a": "b"}}})["metadata"]["generation"] == 1
    assert patch({"status": {"phase": "Ready"}})["metadata"]["generation"] == 1
    assert "status" not in custom.get_namespaced_custom_object(*W[:2], "default", W[2], "w")
    assert patch({"status": {"phase": "Ready"}}, status=True)["metadata"]["generation"] == 1
    assert patch({"spec": {"replicas": 4}})["metadata"]["generation"] == 2
    gadgets = ("example.com", "v1", "gadgets")
    custom.create_cluster_custom_object(
        *gadgets, {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    )
    changed = custom.patch_cluster_custom_object(*gadgets, "g", {"status": {"x": 1}})
    assert changed["status"] == {"x": 1} and changed["metadata"]["generation"] == 2


def test_status_subresource_splits_spec_and_status(kube: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(kube)
    body = {**widget("w"), "status": {"phase": "Ready"}}
    assert "status" not in custom.create_namespaced_custom_object(*W[:2], "default", W[2], body)
    both = {"spec": {"replicas": 9}, "status": {"phase": "Pending"}}
    result = custom.patch_namespaced_custom_object_status(*W[:2], "default", W[2], "w", both)
    assert result["status"] == {"phase": "Pending"} and result["spec"]["replicas"] == 1
    assert custom.get_namespaced_custom_object_status(*W[:2], "default", W[2], "w")["status"] == {"phase": "Pending"}
    current = custom.get_namespaced_custom_object(*W[:2], "default", W[2], "w")
    current["status"] = {"phase": "Ready", "replicas": 3}
    put = custom.replace_namespaced_custom_object_status(*W[:2], "default", W[2], "w", current)
    assert put["status"]["replicas"] == 3
    with pytest.raises(client.ApiException) as bad:
        custom.patch_namespaced_custom_object_status(*W[:2], "default", W[2], "w", {"status": {"phase": "Exploded"}})
    assert bad.value.status == 422
    assert 'status.phase: Unsupported value: "Exploded"' in status_of(bad.value)["message"]


def test_scale_subresource_maps_replicas(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("w", replicas=2))
    api.patch_object(*W, "default", "w", {"status": {"replicas": 1, "selector": "app=w"}}, subresource="status")
    scale = custom.get_namespaced_custom_object_scale(*W[:2], "default", W[2], "w")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 1, "selector": "app=w"}
    scaled = custom.patch_namespaced_custom_object_scale(*W[:2], "default", W[2], "w", {"spec": {"replicas": 5}})
    assert scaled["spec"]["replicas"] == 5
    obj = api.get(*W, "default", "w")
    assert obj is not None and obj["spec"]["replicas"] == 5 and obj["metadata"]["generation"] == 2
    code, _, _ = http(
        api, "PUT", "/apis/example.com/v1/namespaces/default/widgets/w/scale", {**scale, "spec": {"replicas": 3}}
    )
    assert code == 409  # stale resourceVersion in the Scale
    code, body, _ = http(
        api,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w/scale",
        {"spec": {"replicas": -1}},
        "application/merge-patch+json",
    )
    assert code == 422 and "spec.replicas" in body["message"]


# -- schema validation -----------------------------------------------------------------------


def test_schema_validation_defaults_and_pruning(api: KubeAPI) -> None:
    path = "/apis/example.com/v1/namespaces/default/widgets"
    body = widget("w", junk=1, note=None, port="http", extra={"any": {"thing": 1}})
    code, created, _ = http(api, "POST", path, body)
    assert code == 201
    assert created["spec"] == {
        "model": "m",
        "replicas": 1,
        "note": None,
        "port": "http",
        "extra": {"any": {"thing": 1}},
    }

    def rejected(body: dict[str, Any]) -> str:
        code, status, _ = http(api, "POST", path, body)
        assert code == 422 and status["reason"] == "Invalid"
        assert status["details"]["kind"] == "Widget" and status["details"]["causes"]
        message: str = status["message"]
        return message

    missing = {**widget("bad"), "spec": {}}
    assert rejected(missing) == 'Widget.example.com "bad" is invalid: spec.model: Required value'
    type_error = rejected(widget("bad", replicas="two"))
    assert type_error.startswith(
        'Widget.example.com "bad" is invalid: [spec.replicas: Invalid value: "string": '
        'spec.replicas in body must be of type integer: "two", '
    )
    assert "some validation rules were not checked" in type_error  # CEL skipped, as upstream
    assert 'spec.tier: Unsupported value: "huge"' in rejected(widget("bad", tier="huge"))
    assert "should be greater than or equal to 0" in rejected(widget("bad", replicas=-1))
    assert "spec.port" in rejected(widget("bad", port=1.5))
    assert "metadata.name" in rejected(widget("Bad_Name"))
    assert "metadata.labels" in rejected(
        {**widget("bad"), "metadata": {"name": "bad", "labels": {"k": "not a valid value"}}}
    )


def test_cel_rules(api: KubeAPI) -> None:
    assert CEL_AVAILABLE
    path = "/apis/example.com/v1/namespaces/default/widgets"
    code, status, _ = http(api, "POST", path, widget("big", tier="large"))
    assert code == 422
    assert status["message"] == (
        'Widget.example.com "big" is invalid: spec: Invalid value: "object": large widgets need at least 2 replicas'
    )
    assert http(api, "POST", path, widget("big", tier="large", replicas=2))[0] == 201
    assert http(api, "POST", path, widget("owned", owner="alice"))[0] == 201
    code, status, _ = http(api, "PATCH", f"{path}/owned", {"spec": {"owner": "bob"}}, "application/merge-patch+json")
    assert code == 422 and 'spec.owner: Invalid value: "string": owner is immutable' in status["message"]
    assert http(api, "PATCH", f"{path}/owned", {"spec": {"replicas": 3}}, "application/merge-patch+json")[0] == 200


@pytest.mark.skipif(not RAYSERVICE_CRD.exists(), reason="KubeRay's CRD is not available")
def test_real_rayservice_crd_registers_fast_and_validates(api: KubeAPI) -> None:
    started = time.monotonic()
    served = api.register_crd(RAYSERVICE_CRD)
    assert {d.version for d in served} == {"v1", "v1alpha1"}
    with KubeAPI(crds=[load_crd(RAYSERVICE_CRD)]):  # cached: parsing and compiling happen once
        pass
    assert time.monotonic() - started < 10
    rs = ("ray.io", "v1", "rayservices")
    base = {
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {
            "serveConfigV2": "applications: []",
            "rayClusterConfig": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.40.0"}]}},
                }
            },
        },
    }
    created = api.put_object(*rs, base)
    assert created["metadata"]["generation"] == 1
    code, status, _ = http(
        api,
        "PATCH",
        "/apis/ray.io/v1/namespaces/default/rayservices/llm",
        {"spec": {"rayClusterConfig": {"enableInTreeAutoscaling": "yes"}}},
        "application/merge-patch+json",
    )
    assert code == 422
    assert "spec.rayClusterConfig.enableInTreeAutoscaling" in status["message"]
    code, status, _ = http(
        api,
        "PATCH",
        "/apis/ray.io/v1/namespaces/default/rayservices/llm",
        {"spec": {"managedBy": "someone"}},
        "application/merge-patch+json",
    )
    assert code == 422 and "managedBy field value must be either" in status["message"]
    api.patch_object(*rs, "default", "llm", {"status": {"serviceStatus": "Running"}}, subresource="status")
    assert api.get(*rs, "default", "llm")["status"]["serviceStatus"] == "Running"  # type: ignore[index]


# -- deletion, finalizers, garbage collection ------------------------------------------------


def test_finalizers_hold_deletion_until_removed(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    body = widget("w")
    body["metadata"]["finalizers"] = ["example.com/cleanup"]
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], body)
    since = api.resource_version
    code, deleting, _ = http(api, "DELETE", "/apis/example.com/v1/namespaces/default/widgets/w")
    assert code == 202 and deleting["metadata"]["deletionTimestamp"]
    assert deleting["metadata"]["generation"] == 2
    code, body2, _ = http(
        api,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w",
        {"metadata": {"finalizers": ["example.com/cleanup", "more"]}},
        "application/merge-patch+json",
    )
    assert code == 422 and "no new finalizers" in body2["message"]
    custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "w", {"metadata": {"finalizers": None}})
    assert api.get(*W, "default", "w") is None
    events = list(watch_events(api, "/apis/example.com/v1/widgets", resourceVersion=since, timeoutSeconds=0.5))
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]


def _owned(api: KubeAPI, name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    refs = [
        {"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}
        for o in owners
    ]
    return api.put_object(*CM, {"metadata": {"name": name, "namespace": "default", "ownerReferences": refs}})


@pytest.mark.parametrize("policy", ["Background", "Foreground"])
def test_garbage_collection_cascades(api: KubeAPI, policy: str) -> None:
    owner = api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "default"}})
    child = _owned(api, "child", owner)
    _owned(api, "grandchild", child)
    other = api.put_object(*CM, {"metadata": {"name": "other", "namespace": "default"}})
    shared = _owned(api, "shared", owner, other)
    code, _, _ = http(
        api,
        "DELETE",
        "/apis/example.com/v1/namespaces/default/widgets/w",
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy},
    )
    assert code == 200
    remaining = {o["metadata"]["name"]: o for o in api.objects(*CM, "default")}
    assert set(remaining) == {"other", "shared"}
    assert remaining["shared"]["metadata"]["ownerReferences"] == [
        r for r in shared["metadata"]["ownerReferences"] if r["name"] == "other"
    ]


def test_orphan_deletion_and_foreground_waits_for_finalized_dependents(api: KubeAPI) -> None:
    owner = api.put_object(*W, {**widget("o"), "metadata": {"name": "o", "namespace": "default"}})
    _owned(api, "kept", owner)
    assert http(api, "DELETE", "/apis/example.com/v1/namespaces/default/widgets/o?propagationPolicy=Orphan")[0] == 200
    assert api.get(*CM, "default", "kept")["metadata"]["ownerReferences"] == []  # type: ignore[index]

    owner = api.put_object(*W, {**widget("f"), "metadata": {"name": "f", "namespace": "default"}})
    child = api.put_object(
        *CM,
        {
            "metadata": {
                "name": "slow",
                "namespace": "default",
                "finalizers": ["x/y"],
                "ownerReferences": [
                    {"apiVersion": "example.com/v1", "kind": "Widget", "name": "f", "uid": owner["metadata"]["uid"]}
                ],
            }
        },
    )
    assert child["metadata"]["ownerReferences"]
    code, waiting, _ = http(
        api, "DELETE", "/apis/example.com/v1/namespaces/default/widgets/f", {"propagationPolicy": "Foreground"}
    )
    assert code == 202 and waiting["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert api.get(*CM, "default", "slow")["metadata"]["deletionTimestamp"]  # type: ignore[index]
    api.patch_object(*CM, "default", "slow", {"metadata": {"finalizers": []}})
    assert api.get(*CM, "default", "slow") is None and api.get(*W, "default", "f") is None


def test_namespace_deletion_removes_contents(kube: client.ApiClient, api: KubeAPI) -> None:
    api.ensure_namespace("doomed")
    api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "doomed", "finalizers": ["x/y"]}})
    client.CoreV1Api(kube).delete_namespace("doomed")
    ns = api.get("", "v1", "namespaces", None, "doomed")
    assert ns is not None and ns["status"]["phase"] == "Terminating"
    code, body, _ = http(api, "POST", "/api/v1/namespaces/doomed/configmaps", {"metadata": {"name": "late"}})
    assert code == 403 and body["reason"] == "Forbidden"
    api.patch_object(*W, "doomed", "w", {"metadata": {"finalizers": None}})
    assert api.get("", "v1", "namespaces", None, "doomed") is None


# -- CRDs over HTTP, core objects, direct access ---------------------------------------------


def test_posting_a_crd_registers_and_deleting_unregisters(kube: client.ApiClient, api: KubeAPI) -> None:
    crd = json.loads(json.dumps(GADGETS).replace("gadget", "gizmo").replace("Gadget", "Gizmo"))
    ext = client.ApiextensionsV1Api(kube)
    ext.create_custom_resource_definition(crd)
    established = ext.read_custom_resource_definition("gizmos.example.com")
    assert {c.type for c in established.status.conditions} == {"NamesAccepted", "Established"}
    listed = http(api, "GET", "/apis/example.com/v1")[1]["resources"]
    assert "gizmos" in [r["name"] for r in listed]
    custom = client.CustomObjectsApi(kube)
    custom.create_cluster_custom_object(
        "example.com", "v1", "gizmos", {"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"}}
    )
    ext.delete_custom_resource_definition("gizmos.example.com")
    assert http(api, "GET", "/apis/example.com/v1/gizmos")[0] == 404
    bad = {**crd, "metadata": {"name": "wrong.example.com"}}
    with pytest.raises(client.ApiException) as invalid:
        ext.create_custom_resource_definition(bad)
    assert invalid.value.status == 422


def test_core_objects_are_stored_without_schema(kube: client.ApiClient, api: KubeAPI) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"}, type="Opaque")
    )
    core.create_namespaced_service(
        "default",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="svc"), spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])
        ),
    )
    event = core.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="ev-"),
            reason="Test",
            message="hello",
            involved_object=client.V1ObjectReference(kind="Widget", name="w", namespace="default"),
        ),
    )
    assert event.metadata.name.startswith("ev-")
    lease = client.CoordinationV1Api(kube).create_namespaced_lease(
        "default",
        client.V1Lease(metadata=client.V1ObjectMeta(name="leader"), spec=client.V1LeaseSpec(holder_identity="me")),
    )
    assert lease.spec.holder_identity == "me" and lease.metadata.generation is None
    events_v1 = client.EventsV1Api(kube).list_namespaced_event("default")
    assert events_v1.items == []  # events.k8s.io is stored apart from core events here
    assert [s.metadata.name for s in core.list_namespaced_secret("default").items] == ["s"]


def test_direct_access_is_thread_safe_and_visible_to_watchers(api: KubeAPI) -> None:
    since = api.resource_version

    def create(prefix: str) -> None:
        for i in range(20):
            api.put_object(*CM, {"metadata": {"name": f"{prefix}-{i}", "namespace": "default"}})

    threads = [threading.Thread(target=create, args=(p,)) for p in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(api.objects(*CM, "default")) == 60
    assert api.resource_version == since + 60
    events = list(watch_events(api, "/api/v1/configmaps", resourceVersion=since, timeoutSeconds=0.5))
    assert len(events) == 60 and {e["type"] for e in events} == {"ADDED"}
    assert api.delete(*CM, "default", "a-0") and not api.delete(*CM, "default", "a-0")
    code, body, _ = http(api, "DELETE", "/api/v1/namespaces/default/configmaps/a-1")
    assert code == 200 and body["kind"] == "Status" and body["status"] == "Success"
    assert api.objects(*CM, label_selector="missing") == []


# -- traffic log and faults ------------------------------------------------------------------


def test_traffic_log_counts_writes_and_verbs(kube: client.ApiClient, api: KubeAPI) -> None:
    custom = client.CustomObjectsApi(kube)
    api.clear_log()
    custom.create_namespaced_custom_object(*W[:2], "default", W[2], widget("w"))
    custom.patch_namespaced_custom_object(*W[:2], "default", W[2], "w", {"spec": {"model": "m"}})
    custom.patch_namespaced_custom_object_status(*W[:2], "default", W[2], "w", {"status": {"phase": "Ready"}})
    custom.list_namespaced_custom_object(*W[:2], "default", W[2])
    custom.delete_namespaced_custom_object(*W[:2], "default", W[2], "w")
    assert [(r.method, r.status, r.changed) for r in api.writes()] == [
        ("POST", 201, True),
        ("PATCH", 200, False),
        ("PATCH", 200, True),
        ("DELETE", 200, True),
    ]
    assert len(api.writes(changed=False)) == 1
    assert api.verbs_used(user_agent="OpenAPI-Generator") == {
        ("create", "example.com", "widgets", ""),
        ("patch", "example.com", "widgets", ""),
        ("patch", "example.com", "widgets", "status"),
        ("list", "example.com", "widgets", ""),
        ("delete", "example.com", "widgets", ""),
    }
    record = api.requests[1]
    assert record.content_type == "application/merge-patch+json" and record.name == "w"
    api.clear_log()
    assert api.requests == []


def test_fault_plan_is_seeded_and_respects_verbs() -> None:
    def labels(plan: FaultPlan) -> list[str]:
        return [d.label if (d := plan.decide(verb="patch", user_agent="kopf/1")) else "" for _ in range(50)]

    mixed = {"seed": 7, "error_rate": 0.3, "delay_rate": 0.3}
    assert labels(FaultPlan(**mixed)) == labels(FaultPlan(**mixed))  # type: ignore[arg-type]
    assert labels(FaultPlan(**mixed)) != labels(FaultPlan(**{**mixed, "seed": 8}))  # type: ignore[arg-type]
    conflicts = FaultPlan(error_rate=1.0, error_statuses=(409,))
    assert conflicts.decide(verb="get", user_agent="") is None  # 409 only answers writes
    decision = conflicts.decide(verb="update", user_agent="")
    assert decision is not None and decision.status == 409
    only_kopf = FaultPlan(error_rate=1.0, user_agent_prefix="kopf/")
    assert only_kopf.decide(verb="get", user_agent="other") is None
    assert FaultPlan(error_rate=1.0).decide(verb=None, user_agent="") is None  # discovery


def test_faults_answer_errors_delays_and_drop_watches(api: KubeAPI) -> None:
    assert http(api, "GET", "/api/v1/configmaps")[0] == 200  # off by default
    api.faults = FaultPlan(error_rate=1.0, error_statuses=(429,), retry_after_seconds=2)
    code, body, headers = http(api, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    assert code == 429 and headers["Retry-After"] == "2" and body["reason"] == "TooManyRequests"
    assert api.get(*CM, "default", "c") is None  # the refused write did not happen
    api.faults = FaultPlan(error_rate=1.0, error_statuses=(503,))
    assert http(api, "GET", "/api/v1/configmaps")[0] == 503
    assert http(api, "GET", "/api/v1")[0] == 200  # discovery is spared by default
    api.faults = FaultPlan(delay_rate=1.0, delay_range=(0.3, 0.3))
    started = time.monotonic()
    assert http(api, "GET", "/api/v1/configmaps")[0] == 200
    assert time.monotonic() - started >= 0.3 and api.requests[-1].fault == "delay"
    api.faults = FaultPlan(watch_drop_rate=1.0, watch_drop_after=(0.3, 0.3))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(watch_events(api, "/api/v1/configmaps", timeoutSeconds=5))
    assert time.monotonic() - started < 3
    assert api.faults.injected["drop"] == 1
    api.faults = None


# -- kopf end to end -------------------------------------------------------------------------

OPERATOR = """
import kopf

@kopf.on.create("example.com", "v1", "widgets")
def created(body, spec, patch, **_):
    patch.status["phase"] = "Ready"
    kopf.info(body, reason="Ready", message="widget is ready")
    return {"model": spec["model"]}

@kopf.on.delete("example.com", "v1", "widgets")
def deleted(logger, **_):
    logger.info("widget is gone")
"""


def test_kopf_operator_runs_against_the_emulator(api: KubeAPI, tmp_path: Path) -> None:
    from kopf.testing import KopfRunner

    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    with (
        api.use_kubeconfig(tmp_path / "kubeconfig"),
        KopfRunner(["run", "--standalone", "-A", str(operator)], timeout=30) as runner,
    ):
        api.wait_until(lambda: any(r.verb == "watch" and r.resource == "widgets" for r in api.requests))
        api.put_object(*W, {**widget("w"), "metadata": {"name": "w", "namespace": "default"}})
        ready = api.wait_until(
            lambda: (o := api.get(*W, "default", "w")) and o.get("status", {}).get("phase") == "Ready" and o
        )
        assert ready["status"]["created"] == {"model": "m"}
        assert ready["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        api.wait_until(lambda: api.objects("", "v1", "events", "default"))
        api.delete(*W, "default", "w")
        api.wait_until(lambda: api.get(*W, "default", "w") is None)
    assert runner.exit_code == 0 and runner.exception is None
    assert "widget is gone" in runner.output
    used = api.verbs_used(user_agent="kopf/")
    assert {
        ("list", "example.com", "widgets", ""),
        ("watch", "example.com", "widgets", ""),
        ("patch", "example.com", "widgets", ""),
        ("patch", "example.com", "widgets", "status"),
        ("create", "", "events", ""),
    } <= used
    json_patches = [r for r in api.writes(user_agent="kopf/") if r.content_type == "application/json-patch+json"]
    assert json_patches and all(r.status == 200 for r in json_patches)
