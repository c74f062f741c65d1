"""Serving overhead: bare vLLM vs stock Ray Serve LLM vs `llmdeploy serve`, same engine, same load.

For each built-in model (`builtin://tiny`, an overhead stress case where the engine is nearly
free, and `builtin://gpu-regime`, ≈ 82M parameters, whose ≈ 12 ms decode step at batch 8 on
this CPU is the regime of an 8B model on an H100), three servers are started one after
another, each as a child process, with the same vLLM engine settings:

  vllm           vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`)
  ray-serve-llm  stock Ray Serve LLM: `build_openai_app` with one `LLMConfig`, no project
                 code (this file re-runs itself as the child, `--stock-ray-child`)
  llmdeploy      `llmdeploy serve <manifest>`, the project's CLI

The engine settings come from one LLMDeployment manifest: `llmdeploy render` gives its serving
arguments, `llmdeploy.serving.app.engine_kwargs` the vLLM engine arguments, and exactly those
are passed to vLLM's server (as flags) and to the stock `LLMConfig` (as `engine_kwargs`); the
run fails if they differ from the intended settings. Both Ray systems get
`max_ongoing_requests` explicitly (Ray Serve LLM's default is 1e9) and one replica.

The request mix is `benchmarks/workloads/serving_overhead.yaml` (see `loadgen.WorkloadSpec`):
fixed-length outputs (`ignore_eos` + `min_tokens`), prompts of a fixed token count, half of the
requests streaming; per concurrency level a warm-up (not counted), then the measured requests,
closed loop. Identical requests for every system. Reported per model x system x concurrency:
output tokens/s, requests/s, TTFT p50/p99 (streaming requests), end-to-end latency p50/p99,
errors, and the CPU time per request the server's processes spent outside vLLM's engine
processes (EngineCore and its Worker: the serving overhead, from /proc, with the split by
process in the JSON) and inside them; then the ratios of the two Ray
systems to bare vLLM and the goals (gpu-regime: llmdeploy >= 0.9x vLLM throughput and TTFT p50
<= 1.2x; both models: llmdeploy >= stock Ray Serve LLM throughput).

Engine threads: every engine runs with the same `OMP_NUM_THREADS` (`--engine-threads`, default
1). Left unset, Ray sets 1 for its actors while bare vLLM's OpenMP takes every core, so the Ray
systems and bare vLLM would run different engines; and on 2 cores a 2-thread engine spins
against the HTTP front end and the load generator. One thread leaves the other core to the
serving path, the closest this machine gets to a GPU host, where the model's compute does not
compete with the front end's CPU.

Noise: each measured phase runs `--repeats` times (default 2, each with its own prompts) on the
same server; the row pools the requests of all repeats, and `spread %` is the spread of the
repeats' throughputs, the run-to-run noise to judge differences against.

What transfers to GPUs: with one engine thread and 320-token prompts prefilled in chunks
between the decode steps, gpu-regime's time per output token here is ≈ 50 ms at concurrency 8
and its TTFT over a second, so this workload is more engine-bound than an 8B model on an
H100. Fixed per-request costs of a serving path (for example Ray Serve LLM's 50 ms batching of
streamed chunks, `RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS`) weigh less in these ratios than
they would on a GPU; the tiny model's rows show them nearly undiluted.

Only one engine stack runs at a time: each server is stopped (SIGINT, then SIGKILL of every
process of its tree after a timeout) and checked gone before the next starts. The load
generator shares the machine's cores with the server; `other_cpu_s` in the JSON is the CPU
time of everything else on the machine during a phase (noise).

    .venv/bin/python benchmarks/serving_overhead.py                 # full run, ~25 min on 2 cores
    .venv/bin/python benchmarks/serving_overhead.py --requests 16 --models tiny   # quick check
    .venv/bin/python benchmarks/serving_overhead.py --report benchmarks/results/serving_overhead.json

Writes benchmarks/results/serving_overhead.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from results import machine, table, write

REPO: Final = Path(__file__).resolve().parents[1]
WORKLOAD: Final = Path(__file__).resolve().parent / "workloads" / "serving_overhead.yaml"
MODELS: Final = ("tiny", "gpu-regime")
SYSTEMS: Final = ("vllm", "ray-serve-llm", "llmdeploy")
BASELINE: Final = "vllm"
SERVED_NAME: Final = "m"
# Logical CPUs for the local Ray of the stock system, as `llmdeploy serve` takes for one replica.
RAY_NUM_CPUS: Final = 4
ENGINE_CORE: Final = "engine-core"  # vLLM's scheduler process (VLLM::EngineCore)
ENGINE_WORKER: Final = "engine-worker"  # vLLM's model-runner process on CPU (VLLM::Worker)
ENGINE: Final = frozenset({ENGINE_CORE, ENGINE_WORKER})
CLIENT: Final = "client"

# Offline, no telemetry, caches in the work tree; inherited by every server and its children.
ENV_DEFAULTS: Final = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # vLLM's CPU backend pins every engine to core 0 unless told otherwise.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TMPDIR": str(REPO / ".cache" / "tmp"),
    "LLMDEPLOY_MODEL_CACHE": str(REPO / ".cache" / "models"),
    "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"),
}
# Overrides kv_cache_memory_bytes on CPU (GiB); every system sizes the cache in bytes instead.
ENV_REMOVED: Final = ("VLLM_CPU_KVCACHE_SPACE",)


@dataclass(frozen=True)
class EngineSettings:
    """What every system's engine runs with (one replica)."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 1024
    max_model_len: int = 512
    kv_cache_mib: int = 256
    chunked_prefill: bool = True
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256

    def expected_engine_kwargs(self) -> dict[str, Any]:
        return {
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": self.kv_cache_mib * 2**20,
            "enable_chunked_prefill": self.chunked_prefill,
            "enable_prefix_caching": True,
            "enforce_eager": True,
        }


def manifest(model: str, settings: EngineSettings) -> str:
    """The LLMDeployment that `llmdeploy serve` runs (and `llmdeploy render` checks)."""
    spec = {
        "apiVersion": "llmdeploy.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": f"bench-{model}"},
        "spec": {
            "model": {"source": f"builtin://{model}", "name": SERVED_NAME, "maxModelLen": settings.max_model_len},
            "accelerator": {"type": "cpu", "kvCacheMemoryMiB": settings.kv_cache_mib},
            "batching": {
                "maxNumSeqs": settings.max_num_seqs,
                "maxNumBatchedTokens": settings.max_num_batched_tokens,
                "chunkedPrefill": settings.chunked_prefill,
            },
            "serving": {
                "maxOngoingRequests": settings.max_ongoing_requests,
                "maxQueuedRequests": settings.max_queued_requests,
            },
            "autoscaling": {"enabled": False},
            "replicas": 1,
        },
    }
    return json.dumps(spec, indent=2) + "\n"  # JSON is YAML


def rendered_engine_kwargs(manifest_path: Path, settings: EngineSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vLLM engine kwargs, serving args) that `llmdeploy render` gives for the manifest.

    Raises when they differ from `settings`: every system must run the same engine.
    """
    import yaml

    from llmdeploy.serving import app
    from llmdeploy.serving.config import ServingArgs

    out = subprocess.run(
        [sys.executable, "-m", "llmdeploy.cli", "render", str(manifest_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    (application,) = yaml.safe_load(yaml.safe_load(out)["spec"]["serveConfigV2"])["applications"]
    args = ServingArgs.model_validate(application["args"])
    kwargs = app.engine_kwargs(args.engine)
    expected = settings.expected_engine_kwargs()
    wrong = {k: (kwargs.get(k), v) for k, v in expected.items() if kwargs.get(k) != v}
    deployment = args.deployment
    if deployment.max_ongoing_requests != settings.max_ongoing_requests:
        wrong["max_ongoing_requests"] = (deployment.max_ongoing_requests, settings.max_ongoing_requests)
    if deployment.autoscaling or deployment.num_replicas != 1:
        wrong["replicas"] = (deployment.num_replicas, 1)
    if wrong:
        raise SystemExit(f"llmdeploy render gives other engine settings than intended (got, wanted): {wrong}")
    return kwargs, application["args"]


# Engine arguments that are plain `store_true` flags in vLLM's CLI (no `--no-` form).
_STORE_TRUE_FLAGS: Final = frozenset({"disable_log_stats"})


def vllm_cli_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """Engine kwargs → `api_server` flags (`max_num_seqs=32` → `--max-num-seqs 32`)."""
    flags: list[str] = []
    for key, value in sorted(kwargs.items()):
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            elif key not in _STORE_TRUE_FLAGS:
                flags.append("--no-" + flag[2:])
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def child_env(engine_threads: int) -> dict[str, str]:
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in ENV_DEFAULTS.items()}}
    env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    # The same torch/OpenMP threads for every engine. Unset, Ray gives its actors 1 and bare vLLM
    # takes every core, so the systems would run different engines; Ray keeps a value that is set.
    env["OMP_NUM_THREADS"] = str(engine_threads)
    for key in ENV_REMOVED:
        env.pop(key, None)
    return env


def category(proc: Any) -> str:
    """A stable name for a server process: Ray's and vLLM's process titles, or what runs."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except Exception:  # gone, or not ours to read
        return "gone"
    first = cmd[0] if cmd else name
    joined = " ".join(cmd[:6])
    if "EngineCore" in first or "EngineCore" in name:
        return ENGINE_CORE
    if first.startswith("VLLM::Worker") or name.startswith("VLLM::Worker"):
        return ENGINE_WORKER
    if first.startswith("ray::"):
        title = first.split()[0]
        # ray::ServeReplica:<app>:<deployment>: the OpenAI ingress, or the replica that runs the
        # engine (named LLMServer:<model> by stock Ray Serve LLM, after the LLMDeployment by llmdeploy).
        if title.startswith("ray::ServeReplica:"):
            return "ray::ServeReplica:ingress" if "Ingress" in title else "ray::ServeReplica:engine"
        return title
    if "vllm.entrypoints.openai.api_server" in joined:
        return "vllm-api-server"
    if "llmdeploy.cli" in joined:
        return "driver (llmdeploy serve)"
    if "serving_overhead.py" in joined:
        return "driver (stock Ray Serve LLM)"
    base = Path(first).name or name
    if "ray" in joined and base.startswith("python"):
        return "ray-python (" + next((Path(c).name for c in cmd[1:] if c.endswith(".py")), "?") + ")"
    return base


@dataclass
class ServerProcess:
    """A server as a child process; tracks every process of its tree to account CPU and stop it."""

    system: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    known: dict[int, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        import psutil

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL
            )
        self.known = {self.proc.pid: psutil.Process(self.proc.pid)}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def track(self) -> list[Any]:
        """Every live process of the tree (remembered, so reparented ones are not lost)."""
        import psutil

        for proc in list(self.known.values()):
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    self.known.setdefault(child.pid, child)
        live = []
        for pid, proc in list(self.known.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
                else:
                    del self.known[pid]
            except psutil.Error:
                del self.known[pid]
        return live

    def cpu(self) -> dict[int, tuple[str, float]]:
        import psutil

        snapshot = {}
        for proc in self.track():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                snapshot[proc.pid] = (category(proc), times.user + times.system)
        return snapshot

    def rss_mib(self) -> float:
        import psutil

        total = 0
        for proc in self.track():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return round(total / 2**20, 1)

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """SIGINT, wait; then SIGKILL whatever of the tree is left. Returns how it went."""
        import psutil

        if self.proc is None:
            return {"stopped": "never started"}
        tree = self.track()
        how = "exited on its own"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
                how = "SIGINT"
            except subprocess.TimeoutExpired:
                how = "SIGKILL after SIGINT timed out"
                self.proc.kill()
                self.proc.wait(timeout=30)
        # The tree's other processes get a moment to follow their parent, then are killed.
        _, alive = psutil.wait_procs([p for p in tree if p.pid != self.proc.pid], timeout=30)
        killed = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                killed.append(f"{proc.pid} {category(proc)}")
                proc.kill()
        _, still = psutil.wait_procs(alive, timeout=15)
        strays = [p.pid for p in still if _alive(p)]
        if strays:
            raise RuntimeError(f"{self.system}: processes {strays} survived SIGKILL; not starting another engine")
        return {"stopped": how, "killed_after_timeout": killed, "exit_code": self.proc.returncode}


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def foreign_engines() -> list[str]:
    """Engine or Ray processes on this machine that are not ours (they would skew the numbers)."""
    import psutil

    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if proc.pid in mine or proc.pid == os.getpid():
            continue
        cmd = " ".join(proc.info.get("cmdline") or [])[:120]
        name = proc.info.get("name") or ""
        if "EngineCore" in name or "EngineCore" in cmd or name in ("raylet", "gcs_server") or cmd.startswith("ray::"):
            found.append(f"{proc.pid} {cmd or name}")
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class CpuWindow:
    """CPU seconds spent during a phase by the server's processes (by category), the client, the rest."""

    server: ServerProcess
    start: dict[int, tuple[str, float]] = field(default_factory=dict)
    busy0: float = 0.0
    client0: float = 0.0

    def __enter__(self) -> CpuWindow:
        self.start = self.server.cpu()
        self.busy0, self.client0 = machine_busy_s(), self_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self.server.cpu()
        self.busy1, self.client1 = machine_busy_s(), self_cpu_s()

    def report(self) -> dict[str, Any]:
        by_category: dict[str, float] = {}
        for pid, (cat, seconds) in self.end.items():
            before = self.start.get(pid, (cat, 0.0))[1]
            by_category[cat] = by_category.get(cat, 0.0) + max(0.0, seconds - before)
        server = sum(by_category.values())
        client = self.client1 - self.client0
        busy = self.busy1 - self.busy0
        return {
            "server_cpu_s": round(server, 2),
            "engine_cpu_s": round(sum(by_category.get(k, 0.0) for k in ENGINE), 2),
            "client_cpu_s": round(client, 2),
            "other_cpu_s": round(max(0.0, busy - server - client), 2),
            "by_process": {k: round(v, 2) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1]) if v >= 0.01},
        }


# --- the three systems ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    model: str
    model_dir: Path
    manifest: Path
    engine_kwargs: dict[str, Any]
    settings: EngineSettings
    engine_threads: int = 1


def make_server(system: str, target: Target, workdir: Path) -> ServerProcess:
    port, metrics_port = free_port(), free_port()
    env = child_env(target.engine_threads)
    log = workdir / f"{target.model}-{system}.log"
    if system == "vllm":
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(target.model_dir),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *vllm_cli_flags(target.engine_kwargs),
        ]
    elif system == "ray-serve-llm":
        config = workdir / f"{target.model}-stock-ray.json"
        config.write_text(
            json.dumps(
                {
                    "port": port,
                    "metrics_port": metrics_port,
                    "num_cpus": RAY_NUM_CPUS,
                    "model_id": SERVED_NAME,
                    "model_dir": str(target.model_dir),
                    "engine_kwargs": target.engine_kwargs,
                    "max_ongoing_requests": target.settings.max_ongoing_requests,
                },
                indent=2,
            )
        )
        argv = [sys.executable, str(Path(__file__).resolve()), "--stock-ray-child", str(config)]
    elif system == "llmdeploy":
        argv = [
            sys.executable,
            "-m",
            "llmdeploy.cli",
            "serve",
            str(target.manifest),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ]
    else:
        raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    return ServerProcess(system=system, argv=argv, env=env, log_path=log, port=port)


def stock_ray_child(config_path: str, max_lifetime_s: float = 4 * 3600) -> None:
    """Stock Ray Serve LLM, no project code: the child process of the `ray-serve-llm` system."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    config = json.loads(Path(config_path).read_text())
    parent = os.getppid()
    # Logical CPUs: the engine replica's placement group takes 2 and the ingress 1 (2 cores here).
    ray.init(
        address="local",
        num_cpus=config["num_cpus"],
        include_dashboard=False,
        _metrics_export_port=config["metrics_port"],
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": config["port"]})
        llm_config = LLMConfig(
            model_loading_config={"model_id": config["model_id"], "model_source": config["model_dir"]},
            engine_kwargs=config["engine_kwargs"],
            accelerator_config={"kind": "cpu"},
            deployment_config={"num_replicas": 1, "max_ongoing_requests": config["max_ongoing_requests"]},
        )
        serve.run(build_openai_app({"llm_configs": [llm_config]}), name="llm", route_prefix="/")
        print("stock Ray Serve LLM is serving", flush=True)
        deadline = time.monotonic() + max_lifetime_s
        # Until SIGINT (KeyboardInterrupt), the parent's death, or the lifetime bound.
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


# --- one run --------------------------------------------------------------------------------


def token_counter(model_dir: Path) -> Callable[[str], int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class Phases:
    """The warm-up and measured requests of each concurrency level (identical for every system).

    A warm-up sends at least one full batch (`concurrency` requests). Each repeat of a measured
    phase has its own prompts, so no repeat hits the prefix cache of another.
    """

    warmup: dict[int, list[loadgen.RequestSpec]]
    measured: dict[int, list[list[loadgen.RequestSpec]]]


def make_phases(
    spec: loadgen.WorkloadSpec, repeats: int = 1, count_tokens: Callable[[str], int] | None = None
) -> Phases:
    warmup = {
        c: loadgen.make_requests(spec, max(spec.warmup_requests, c), phase=f"warmup-c{c}", count_tokens=count_tokens)
        for c in spec.concurrency
    }
    measured = {
        c: [
            loadgen.make_requests(spec, spec.requests, phase=f"c{c}-r{r}", count_tokens=count_tokens)
            for r in range(repeats)
        ]
        for c in spec.concurrency
    }
    return Phases(warmup, measured)


def merge_cpu(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the CPU accounting of several windows."""
    merged: dict[str, Any] = {}
    by_process: dict[str, float] = {}
    for report in reports:
        for key, value in report.items():
            if key == "by_process":
                for name, seconds in value.items():
                    by_process[name] = round(by_process.get(name, 0.0) + seconds, 2)
            else:
                merged[key] = round(merged.get(key, 0.0) + value, 2)
    merged["by_process"] = dict(sorted(by_process.items(), key=lambda kv: -kv[1]))
    return merged


def pooled_row(
    concurrency: int, runs: Sequence[loadgen.LoadRun], cpu: Sequence[Mapping[str, Any]], expected_tokens: int
) -> dict[str, Any]:
    """One row from the repeats of a phase: requests pooled (percentiles over all of them,
    throughput over the summed spans), plus each repeat's throughput to show the noise."""
    pooled = loadgen.LoadRun(
        results=[r for run in runs for r in run.results],
        wall_s=sum(run.wall_s for run in runs),
        not_sent=sum(run.not_sent for run in runs),
        timed_out=any(run.timed_out for run in runs),
    )
    row: dict[str, Any] = {
        "concurrency": concurrency,
        **loadgen.summarize(pooled, expected_output_tokens=expected_tokens),
    }
    row.update(merge_cpu(cpu))
    per_repeat = [loadgen.summarize(run)["output_tok_s"] for run in runs]
    row["repeat_tok_s"] = per_repeat
    row["repeat_spread_pct"] = (
        round(100 * (max(per_repeat) - min(per_repeat)) / (sum(per_repeat) / len(per_repeat)), 1)
        if len(per_repeat) > 1 and sum(per_repeat) > 0
        else None
    )
    row["repeat_other_cpu_s"] = [c.get("other_cpu_s") for c in cpu]
    return row


def measure(
    server: ServerProcess, spec: loadgen.WorkloadSpec, phases: Phases, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Warm-up then measured load at each concurrency level against a ready server."""
    rows = []
    for concurrency in spec.concurrency:
        warm = asyncio.run(
            loadgen.run_load(server.base_url, SERVED_NAME, spec, phases.warmup[concurrency], concurrency=concurrency)
        )
        warm_summary = loadgen.summarize(warm)
        if warm_summary["ok"] == 0:
            raise RuntimeError(f"{server.system}: every warm-up request failed: {warm_summary['error_messages']}")
        runs, cpu = [], []
        for requests in phases.measured[concurrency]:
            with CpuWindow(server) as window:
                runs.append(
                    asyncio.run(loadgen.run_load(server.base_url, SERVED_NAME, spec, requests, concurrency=concurrency))
                )
            cpu.append(window.report())
        row = pooled_row(concurrency, runs, cpu, spec.output_tokens)
        row["warmup_errors"] = warm_summary["errors"]
        row["load_avg_1m"] = round(os.getloadavg()[0], 2)
        log(
            f"    c={concurrency}: {row['output_tok_s']} tok/s, TTFT p50 {row['ttft_p50_ms']} ms, "
            f"e2e p50 {row['e2e_p50_ms']} ms, errors {row['errors']}, server CPU {row['server_cpu_s']} s "
            f"(engine {row['engine_cpu_s']} s), other {row['other_cpu_s']} s, repeats {row['repeat_tok_s']} tok/s"
        )
        rows.append(row)
    return rows


def run_system(
    system: str,
    target: Target,
    spec: loadgen.WorkloadSpec,
    phases: Phases,
    workdir: Path,
    *,
    ready_timeout_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    foreign = foreign_engines()
    if foreign:
        log(f"  warning: engine/Ray processes not started by this run are alive: {foreign}")
    server = make_server(system, target, workdir)
    if port_in_use(server.port):
        raise RuntimeError(f"port {server.port} is taken")
    log(f"  {system}: starting ({' '.join(server.argv[:4])} ...), log {server.log_path}")
    started = time.monotonic()
    server.start()
    record: dict[str, Any] = {"system": system, "argv": server.argv, "foreign_processes_at_start": foreign}
    try:
        asyncio.run(loadgen.wait_ready(server.base_url, SERVED_NAME, timeout_s=ready_timeout_s, alive=server.alive))
        record["ready_s"] = round(time.monotonic() - started, 1)
        log(f"  {system}: ready in {record['ready_s']} s")
        record["rss_mib_ready"] = server.rss_mib()
        record["phases"] = measure(server, spec, phases, log)
        record["rss_mib_after"] = server.rss_mib()
        record["processes"] = sorted({category(p) for p in server.track()})
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  {system}: FAILED: {record['error']}")
        tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
        record["log_tail"] = tail
        log(tail)
    finally:
        record["shutdown"] = server.stop()
        log(f"  {system}: stopped ({record['shutdown']['stopped']})")
    return record


# --- report ---------------------------------------------------------------------------------


def result_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per model x system x concurrency (records carry `model` and `phases`)."""
    rows = []
    for record in records:
        for phase in record.get("phases", []):
            ok = max(1, phase["ok"])
            rows.append(
                {
                    "model": record["model"],
                    "system": record["system"],
                    **{
                        k: v
                        for k, v in phase.items()
                        if k not in ("by_process", "error_messages", "repeat_tok_s", "repeat_other_cpu_s")
                    },
                    "overhead_cpu_ms_per_req": round(
                        1e3 * (phase.get("server_cpu_s", 0.0) - phase.get("engine_cpu_s", 0.0)) / ok, 1
                    ),
                    "engine_cpu_ms_per_req": round(1e3 * phase.get("engine_cpu_s", 0.0) / ok, 1),
                }
            )
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return round(value / base, 3)


def ratios(rows: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Each system's throughput and latencies over the baseline's, per model and concurrency."""
    index = {(r["model"], r["system"], r["concurrency"]): r for r in rows}
    out = []
    for (model, system, concurrency), row in index.items():
        base = index.get((model, baseline, concurrency))
        if system == baseline or base is None:
            continue
        out.append(
            {
                "model": model,
                "system": system,
                "concurrency": concurrency,
                "tok_s_x": _ratio(row["output_tok_s"], base["output_tok_s"]),
                "req_s_x": _ratio(row["req_s"], base["req_s"]),
                "ttft_p50_x": _ratio(row["ttft_p50_ms"], base["ttft_p50_ms"]),
                "ttft_p99_x": _ratio(row["ttft_p99_ms"], base["ttft_p99_ms"]),
                "e2e_p50_x": _ratio(row["e2e_p50_ms"], base["e2e_p50_ms"]),
                "e2e_p99_x": _ratio(row["e2e_p99_ms"], base["e2e_p99_ms"]),
            }
        )
    return out


def goals(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The serving-overhead goals, per concurrency level: gpu-regime vs vLLM, both models vs stock Ray.

    `met` is the strict comparison. `noise_pct` is the larger throughput spread between the
    repeats of the two rows compared; a miss smaller than that is reported as `within noise`.
    """
    index = {(r["model"], r["system"], r["concurrency"]): r for r in rows}
    out = []

    def add(
        goal: str, mine: Mapping[str, Any], other: Mapping[str, Any], key: str, bound: float, at_least: bool
    ) -> None:
        value = _ratio(mine[key], other[key])
        spreads = [r.get("repeat_spread_pct") for r in (mine, other)]
        noise = max((x for x in spreads if x is not None), default=None)
        met = None if value is None else (value >= bound if at_least else value <= bound)
        verdict = {True: "yes", False: "NO", None: "-"}[met]
        if met is False and value is not None and noise is not None:
            slack = bound * noise / 100
            if (value >= bound - slack) if at_least else (value <= bound + slack):
                verdict = "within noise"
        out.append(
            {
                "goal": goal,
                "model": mine["model"],
                "concurrency": mine["concurrency"],
                "value": value,
                "target": f"{'>=' if at_least else '<='} {bound}",
                "noise_pct": noise,
                "met": met,
                "verdict": verdict,
            }
        )

    for model, system, concurrency in sorted(index, key=lambda k: (k[0], k[2], k[1])):
        if system != "llmdeploy":
            continue
        mine = index[(model, system, concurrency)]
        bare = index.get((model, "vllm", concurrency))
        stock = index.get((model, "ray-serve-llm", concurrency))
        if model == "gpu-regime" and bare is not None:
            add("throughput vs vLLM", mine, bare, "output_tok_s", 0.9, at_least=True)
            add("TTFT p50 vs vLLM", mine, bare, "ttft_p50_ms", 1.2, at_least=False)
        if stock is not None:
            add("throughput vs stock Ray Serve LLM", mine, stock, "output_tok_s", 1.0, at_least=True)
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(shown: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not shown:
        return "(no rows)"
    return table(shown, list(columns or shown[0]))


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [
        {
            "model": r["model"],
            "system": r["system"],
            "conc": r["concurrency"],
            "ok": r["ok"],
            "err": r["errors"],
            "tok/s": _fmt(r["output_tok_s"]),
            "req/s": _fmt(r["req_s"], 2),
            "ttft p50": _fmt(r["ttft_p50_ms"]),
            "ttft p99": _fmt(r["ttft_p99_ms"]),
            "e2e p50": _fmt(r["e2e_p50_ms"]),
            "e2e p99": _fmt(r["e2e_p99_ms"]),
            "tpot p50": _fmt(r["tpot_p50_ms"], 1),
            "spread %": _fmt(r.get("repeat_spread_pct"), 1),
            "ovh cpu ms/req": _fmt(r.get("overhead_cpu_ms_per_req"), 1),
            "eng cpu ms/req": _fmt(r.get("engine_cpu_ms_per_req"), 1),
            "other cpu s": _fmt(r.get("other_cpu_s"), 1),
        }
        for r in rows
    ]
    return _table(shown)


def ratios_table(ratio_rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [
        {
            "model": r["model"],
            "system": r["system"],
            "conc": r["concurrency"],
            **{k: _fmt(r[k], 2) for k in ("tok_s_x", "req_s_x", "ttft_p50_x", "ttft_p99_x", "e2e_p50_x", "e2e_p99_x")},
        }
        for r in ratio_rows
    ]
    return _table(shown)


def goals_table(goal_rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [
        {**r, "value": _fmt(r["value"], 2), "noise %": _fmt(r.get("noise_pct"), 1), "met": r["verdict"]}
        for r in goal_rows
    ]
    return _table(shown, ["goal", "model", "concurrency", "value", "target", "noise %", "met"])


def machine_line() -> str:
    info = machine()
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        memory = f", {int(mem) / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        memory = ""
    return f"{info['cpu']}, {info['cores']} cores{memory}, no GPU"


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", type=Path, default=WORKLOAD, help="workload YAML (loadgen.WorkloadSpec)")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per level (default: workload)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests per level (default: workload)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="levels (default: workload)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--repeats", type=int, default=2, help="measured phases per level, pooled (default 2)")
    parser.add_argument(
        "--engine-threads", type=int, default=1, help="OMP_NUM_THREADS of every engine (default 1; see the docstring)"
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds for a server to become ready")
    parser.add_argument("--out", default="serving_overhead", help="results file name under benchmarks/results/")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only re-print (and re-derive) a results file")
    parser.add_argument("--stock-ray-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        report_file(args.report)
        return
    if args.stock_ray_child:
        stock_ray_child(args.stock_ray_child)
        return

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for key in ENV_REMOVED:
        os.environ.pop(key, None)
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)

    spec = loadgen.load_workload(args.workload)
    overrides: dict[str, Any] = {}
    if args.requests is not None:
        overrides["requests"] = args.requests
    if args.warmup is not None:
        overrides["warmup_requests"] = args.warmup
    if args.concurrency is not None:
        overrides["concurrency"] = tuple(args.concurrency)
    spec = loadgen.WorkloadSpec.model_validate({**spec.model_dump(), **overrides})
    settings = EngineSettings()
    # Paths are recorded relative to the checkout: results must not name the machine they ran on.
    recorded_env = {k: v.replace(f"{REPO}/", "") for k, v in ENV_DEFAULTS.items()}
    options = {"repeats": args.repeats, "engine_threads": args.engine_threads, "env": recorded_env}

    from llmdeploy.serving import tinymodel

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"serving overhead on {machine_line()}")
    log(f"workload {spec.name}: {spec.model_dump_json()}")
    log(f"repeats {args.repeats}, engine threads (OMP_NUM_THREADS) {args.engine_threads}")
    workdir = Path(tempfile.mkdtemp(prefix="serving-overhead-", dir=os.environ["TMPDIR"]))
    records: list[dict[str, Any]] = []
    targets: dict[str, dict[str, Any]] = {}
    for model in args.models:
        model_dir = tinymodel.ensure_tiny_model(model)
        manifest_path = workdir / f"{model}.yaml"
        manifest_path.write_text(manifest(model, settings))
        kwargs, serving = rendered_engine_kwargs(manifest_path, settings)
        target = Target(model, model_dir, manifest_path, kwargs, settings, engine_threads=args.engine_threads)
        targets[model] = {"model_dir": str(model_dir), "engine_kwargs": kwargs, "llmdeploy_serving_args": serving}
        phases = make_phases(spec, args.repeats, token_counter(model_dir))
        log(f"{model}: engine kwargs {json.dumps(kwargs, sort_keys=True)}")
        for system in args.systems:
            record = run_system(system, target, spec, phases, workdir, ready_timeout_s=args.ready_timeout, log=log)
            records.append({"model": model, **record})
            save(args.out, spec, settings, options, targets, records, complete=False)

    path = save(args.out, spec, settings, options, targets, records, complete=True)
    print()
    print_report(result_rows(records), header(spec.model_dump(mode="json"), options, machine_line()))
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"FAILED {record['model']} {record['system']}: {record['error']}")
    print(f"wrote {path.relative_to(REPO)}")
    if failed:
        raise SystemExit(1)


def header(workload: Mapping[str, Any], options: Mapping[str, Any], on: str) -> str:
    return (
        f"serving overhead: {workload['requests']} requests per level and repeat, {workload['prompt_tokens']}-token "
        f"prompts, {workload['output_tokens']} output tokens, {workload['stream_fraction']:.0%} streaming, "
        f"x{options['repeats']} repeats pooled, engine threads {options['engine_threads']}; {on}"
    )


def print_report(rows: Sequence[Mapping[str, Any]], title: str) -> None:
    print(title)
    print("latencies in ms; cpu ms/req: server CPU per request outside (ovh) and inside (eng) the engine processes")
    print(results_table(rows))
    print()
    print(f"ratios to {BASELINE} (same model, same concurrency)")
    print(ratios_table(ratios(rows)))
    print()
    print(goals_table(goals(rows)))


def report_file(path: Path) -> None:
    """Re-derive ratios and goals of a results file from its rows (in place) and print the tables."""
    data = json.loads(path.read_text())
    rows = data["rows"]
    data["ratios"], data["goals"] = ratios(rows), goals(rows)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{path} ({data.get('time')}, {data.get('machine_summary')})")
    print_report(rows, header(data["workload"], data, str(data.get("machine_summary"))))


def save(
    name: str,
    spec: loadgen.WorkloadSpec,
    settings: EngineSettings,
    options: Mapping[str, Any],
    targets: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    complete: bool,
) -> Path:
    """Write the results file (also after each system, so an interrupted run keeps what it measured)."""
    rows = result_rows(records)
    return write(
        name,
        {
            "benchmark": "serving_overhead",
            "complete": complete,
            "machine_summary": machine_line(),
            "workload": spec.model_dump(mode="json"),
            "engine_settings": asdict(settings),
            **options,
            "targets": dict(targets),
            "rows": rows,
            "ratios": ratios(rows),
            "goals": goals(rows),
            "runs": list(records),
        },
    )


if __name__ == "__main__":
    main()
