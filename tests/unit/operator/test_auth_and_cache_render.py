"""spec.auth and spec.responseCache reach the serving processes as references, never as values."""

from __future__ import annotations

from typing import Any

import yaml

from llmdeploy.operator.api import LLMDeploymentSpec
from llmdeploy.operator.render import Owner, render_rayservice
from llmdeploy.serving.config import API_KEYS_ENV, REDIS_URL_ENV, ServingArgs


def spec(**fields: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate({"model": {"source": "org/model"}, **fields})


def containers(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def args_of(rayservice: dict[str, Any]) -> ServingArgs:
    (application,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    return ServingArgs.model_validate(application["args"])


def test_api_keys_come_from_the_secret_on_every_ray_pod() -> None:
    rendered = render_rayservice(
        Owner("m", "ns"), spec(auth={"apiKeysSecret": {"name": "keys", "key": "list"}}), served_model_name="m"
    )
    for container in containers(rendered):
        (env,) = [e for e in container["env"] if e["name"] == API_KEYS_ENV]
        assert env == {"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": {"name": "keys", "key": "list"}}}
    assert args_of(rendered).api_keys_env == API_KEYS_ENV


def test_without_auth_no_key_variable_and_no_auth_in_the_args() -> None:
    rendered = render_rayservice(Owner("m", "ns"), spec(), served_model_name="m")
    assert all(e["name"] != API_KEYS_ENV for c in containers(rendered) for e in c["env"])
    assert args_of(rendered).api_keys_env is None


def test_the_redis_url_is_a_secret_reference_and_the_args_name_only_the_variable() -> None:
    cache = {"enabled": True, "backend": "redis", "redisUrlSecret": {"name": "redis", "key": "url"}}
    rendered = render_rayservice(Owner("m", "ns"), spec(responseCache=cache), served_model_name="m")
    for container in containers(rendered):
        (env,) = [e for e in container["env"] if e["name"] == REDIS_URL_ENV]
        assert "value" not in env
        assert env["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}
    args = args_of(rendered)
    assert args.response_cache.redis_url_env == REDIS_URL_ENV
    assert args.response_cache.enabled
