"""The built-in random-weight models: shape, cache behaviour, tokenizer and chat template."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from llmdeploy.serving import tinymodel

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("torch")


def parameter_count(spec: tinymodel.ModelPreset) -> int:
    head_dim = spec.hidden_size // spec.num_attention_heads
    attention = 2 * spec.hidden_size * spec.hidden_size + 2 * spec.hidden_size * spec.num_key_value_heads * head_dim
    mlp = 3 * spec.hidden_size * spec.intermediate_size
    norms = 2 * spec.hidden_size
    embeddings = 2 * spec.vocab_size * spec.hidden_size  # untied input and output
    return spec.num_hidden_layers * (attention + mlp + norms) + embeddings + spec.hidden_size


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinymodel.ensure_tiny_model("tiny", tmp_path_factory.mktemp("models"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_presets_have_the_documented_shapes() -> None:
    tiny, big = tinymodel.PRESETS["tiny"], tinymodel.PRESETS["gpu-regime"]

    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.vocab_size) == (256, 2, 4096)
    assert 3.0e6 < parameter_count(tiny) < 3.6e6
    assert (big.hidden_size, big.num_hidden_layers, big.intermediate_size) == (768, 12, 2048)
    assert (big.num_attention_heads, big.num_key_value_heads, big.vocab_size) == (12, 4, 4096)
    assert 80e6 < parameter_count(big) < 84e6


def test_cache_keys_differ_per_preset_and_are_stable() -> None:
    keys = {name: spec.cache_key() for name, spec in tinymodel.PRESETS.items()}

    assert len(set(keys.values())) == len(keys)
    assert keys == {name: spec.cache_key() for name, spec in tinymodel.PRESETS.items()}
    assert tinymodel.model_path("tiny", "/c").name.startswith("tiny-")


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(tinymodel.MODEL_CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tinymodel.default_cache_dir() == tmp_path / "home" / ".cache" / "llmdeploy" / "models"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tinymodel.default_cache_dir() == tmp_path / "xdg" / "llmdeploy" / "models"

    monkeypatch.setenv(tinymodel.MODEL_CACHE_ENV, str(tmp_path / "explicit"))
    assert tinymodel.default_cache_dir() == tmp_path / "explicit"


@pytest.mark.parametrize(("source", "kind"), [("builtin://tiny", "tiny"), ("builtin://gpu-regime/", "gpu-regime")])
def test_builtin_sources_name_presets(source: str, kind: str) -> None:
    assert tinymodel.is_builtin(source)
    assert tinymodel.builtin_kind(source) == kind


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(tinymodel.UnknownBuiltinModelError, match=r"builtin://tiny, builtin://gpu-regime"):
        tinymodel.builtin_kind("builtin://enormous")


def test_build_writes_a_complete_hugging_face_folder(built: Path) -> None:
    names = {path.name for path in built.iterdir()}

    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert tinymodel.is_built(built)
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (256, 2, 4096)
    assert config["torch_dtype"] == "bfloat16"
    assert 5e6 < (built / "model.safetensors").stat().st_size < 8e6
    # No staging folders are left beside the model.
    assert [path.name for path in built.parent.iterdir()] == [built.name]


def test_second_call_is_a_no_op(built: Path) -> None:
    before = (built / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()

    again = tinymodel.ensure_tiny_model("tiny", built.parent)

    assert again == built
    assert (built / "model.safetensors").stat().st_mtime_ns == before
    assert time.monotonic() - started < 1.0


def test_weights_and_tokenizer_are_deterministic(built: Path, tmp_path: Path) -> None:
    other = tinymodel.ensure_tiny_model("tiny", tmp_path)

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(other / name) == digest(built / name), name


def test_tokenizer_fills_the_vocabulary_and_round_trips_text(built: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(built))
    text = "The operator reads a resource, then 42 replicas answer: ünïcödé too!"

    assert len(tokenizer) == 4096
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token == tinymodel.EOS_TOKEN
    # Every id the model can emit decodes to something.
    assert all(tokenizer.convert_ids_to_tokens(i) is not None for i in range(4096))


def test_chat_template_renders_chatml_with_a_generation_prompt(built: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(built))
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )

    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_model_loads_and_runs_with_transformers(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(built))
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits

    assert tuple(logits.shape) == (1, 3, 4096)
    assert torch.isfinite(logits).all()
