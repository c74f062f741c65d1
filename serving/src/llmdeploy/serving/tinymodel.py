"""Built-in random-weight models for tests, local serving and benchmarks.

Nothing can be downloaded from a model hub where the project is developed and tested, so the
serving stack needs models it can build itself. This module owns them:

* ``tiny`` — a Llama-architecture model with hidden size 256, 2 layers and a 4,096-token
  vocabulary (≈ 3.3M parameters, ≈ 7 MB in bf16): the fastest thing vLLM can load.
* ``gpu-regime`` — the same architecture at hidden 768, 12 layers, intermediate 2,048,
  12 attention / 4 KV heads (≈ 82M parameters): on a CPU its decode step costs about what an
  8B model's does on an H100, so benchmarks run on it transfer to GPUs.

Both share one byte-level BPE tokenizer trained offline with ``tokenizers`` on a small corpus
kept in this module, saved as a Hugging Face fast tokenizer with a ChatML chat template so
``/v1/chat/completions`` works. Weights are seeded, so a given preset is the same model on
every machine with the same torch build.

Models are written under a cache directory (``$LLMDEPLOY_MODEL_CACHE``, else
``$XDG_CACHE_HOME/llmdeploy/models``, else ``~/.cache/llmdeploy/models``) in a folder keyed by
a hash of every parameter that shapes the files; each is built in a temporary folder beside
it and renamed into place, so readers never see half a model and a second call is a no-op.
Manifests name them ``builtin://tiny`` and ``builtin://gpu-regime``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

BUILTIN_SCHEME: Final = "builtin://"
MODEL_CACHE_ENV: Final = "LLMDEPLOY_MODEL_CACHE"
# Bump when the files a preset produces change for the same parameters.
FORMAT_VERSION: Final = 2

BOS_TOKEN: Final = "<|begin_of_text|>"
EOS_TOKEN: Final = "<|end_of_text|>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
PAD_TOKEN: Final = "<|pad|>"
SPECIAL_TOKENS: Final = (BOS_TOKEN, EOS_TOKEN, IM_START, IM_END, PAD_TOKEN)

# ChatML. The generation prompt ends the turn header so the model writes the reply.
CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TOKENIZER_CONFIG: Final = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": BOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "pad_token": PAD_TOKEN,
    "additional_special_tokens": [IM_START, IM_END],
    "add_bos_token": False,
    "add_eos_token": False,
    "model_max_length": 4096,
    "clean_up_tokenization_spaces": False,
    "chat_template": CHAT_TEMPLATE,
}


@dataclass(frozen=True)
class ModelPreset:
    """The shape of a built-in Llama-architecture model."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 4096
    max_position_embeddings: int = 4096
    dtype: str = "bfloat16"
    seed: int = 0

    def cache_key(self) -> str:
        """A short hash of everything that decides the files written for this preset."""
        payload = json.dumps(
            {"preset": asdict(self), "format": FORMAT_VERSION, "corpus": _corpus_digest()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def directory_name(self) -> str:
        return f"{self.name}-{self.cache_key()}"


PRESETS: Final[dict[str, ModelPreset]] = {
    "tiny": ModelPreset(
        name="tiny",
        hidden_size=256,
        num_hidden_layers=2,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "gpu-regime": ModelPreset(
        name="gpu-regime",
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=2048,
        num_attention_heads=12,
        num_key_value_heads=4,
    ),
}


class UnknownBuiltinModelError(ValueError):
    """A ``builtin://`` source names no preset."""


def default_cache_dir() -> Path:
    """Where built models live unless a caller says otherwise."""
    explicit = os.environ.get(MODEL_CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llmdeploy" / "models"


def preset(kind: str) -> ModelPreset:
    """The preset called ``kind``; a one-line error names the ones that exist."""
    try:
        return PRESETS[kind]
    except KeyError:
        known = ", ".join(f"{BUILTIN_SCHEME}{name}" for name in PRESETS)
        raise UnknownBuiltinModelError(f"unknown built-in model {BUILTIN_SCHEME}{kind}; known: {known}") from None


def is_builtin(source: str) -> bool:
    return source.startswith(BUILTIN_SCHEME)


def builtin_kind(source: str) -> str:
    """``builtin://tiny`` → ``tiny`` (validated)."""
    if not is_builtin(source):
        raise UnknownBuiltinModelError(f"{source!r} is not a {BUILTIN_SCHEME} model source")
    kind = source[len(BUILTIN_SCHEME) :].strip("/")
    preset(kind)
    return kind


def model_path(kind: str = "tiny", cache_dir: Path | str | None = None) -> Path:
    """Where ``ensure_tiny_model`` puts ``kind``; pure (builds nothing, checks nothing)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root.absolute() / preset(kind).directory_name()


def is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def ensure_tiny_model(kind: str = "tiny", cache_dir: Path | str | None = None) -> Path:
    """Build the ``kind`` model under ``cache_dir`` unless it is there; return its folder."""
    target = model_path(kind, cache_dir)
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_model(preset(kind), staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first; its copy is identical.
            if not is_built(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_model(spec: ModelPreset, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size)
    tokenizer.save_pretrained(str(out))
    # Written by hand in the form transformers 4.x and 5.x both read (5.x names its own
    # class `TokenizersBackend`, which 4.x, as in older engine images, does not know).
    (out / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model = model.to(getattr(torch, spec.dtype))
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(out), safe_serialization=True)
    # transformers writes the dtype under a key that depends on its version; vLLM reads either.
    with (out / "config.json").open() as handle:
        written = json.load(handle)
    written["torch_dtype"] = spec.dtype
    written.setdefault("rope_theta", written.get("rope_parameters", {}).get("rope_theta", 1e4))
    with (out / "config.json").open("w") as handle:
        json.dump(written, handle, indent=2, sort_keys=True)
    (out / "llmdeploy-builtin.json").write_text(
        json.dumps({"preset": asdict(spec), "format": FORMAT_VERSION}, indent=2) + "\n"
    )
    # mkdtemp creates the folder 0700 and some writers make 0600 files; a shared cache
    # must be readable by the other users of the machine (Ray workers may run as another uid).
    out.chmod(0o755)
    for item in out.iterdir():
        item.chmod(0o644)


def build_tokenizer(vocab_size: int = 4096) -> Any:
    """Train the byte-level BPE tokenizer; returns a ``PreTrainedTokenizerFast``.

    The vocabulary is filled to exactly ``vocab_size`` so every id the model can emit decodes:
    merges learned from the corpus first, then reserved tokens if the corpus runs out.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    shortfall = vocab_size - tokenizer.get_vocab_size()
    if shortfall > 0:
        tokenizer.add_special_tokens([f"<|reserved_{i}|>" for i in range(shortfall)])

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


_PASSAGES: Final = (
    "The operator reads a resource that describes a served language model, renders the "
    "children it needs and applies them. A replica loads the weights, keeps a cache of "
    "attention keys and values, and answers requests that arrive through an OpenAI "
    "compatible interface. When many requests share a long prefix, the engine reuses the "
    "cached blocks instead of computing them again, which cuts the time to the first token.",
    "Autoscaling watches how many requests wait in the queue of every replica. If the queue "
    "grows beyond the target, another replica starts; when traffic stops, replicas drain and "
    "the cluster gives the accelerators back. A request router picks the replica whose cache "
    "already holds the longest part of the prompt, unless that replica is much busier.",
    "Hello! How can I help you today? Please summarize the following document in three "
    "sentences. What is the capital of France? Paris is the capital and largest city of "
    "France. Write a short poem about the sea. The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i, add(i, i))\n"
    "class Cache:\n    def __init__(self):\n        self.items = {}\n"
    "    def get(self, key):\n        return self.items.get(key)\n",
    '{"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], '
    '"max_tokens": 16, "temperature": 0.0, "stream": true}',
    "apiVersion: llmdeploy.io/v1alpha1\nkind: LLMDeployment\nmetadata:\n  name: demo\n"
    "spec:\n  model:\n    source: builtin://tiny\n  replicas:\n    min: 1\n    max: 4\n",
)

_WORD_TEXT: Final = (
    "a about above across after again against all almost alone along already also although "
    "always among an and another answer any anyone anything are area around as ask at away "
    "back batch be because become been before begin behind being below best better between "
    "big block both bring build but by cache call can case cause change check child city "
    "cluster come compute could country cover create current data day decode deploy design "
    "did different do does down during each early earth end engine enough even every example "
    "eye face fact family far fast feel few field find first follow food for form found from "
    "full gateway get give go good government great group grow had hand hard has have he head "
    "hear help her here high him his home house how however idea if important in increase "
    "inside into is it its keep kind know large last later lead learn leave left less let "
    "life light like line list little live load local long look made make man many may me "
    "mean memory might model more most mother move much must my name near need network never "
    "new next night no node not nothing now number of off often old on once one only open "
    "operator or order other our out over own page paper part people place plan play point "
    "policy pool possible power prefill prefix present problem program prompt public put "
    "queue question quick read real reason record region replica request resource response "
    "right river road room route run same say school scale schedule see seem sentence serve "
    "server service set she should show side since small so some something sound spec "
    "stand start state still stop story stream study such system take talk team tell tensor "
    "than that the their them then there these they thing think this those though thought "
    "three through time to together token too took toward tree true try turn two under "
    "until up upon us use user value very voice want was watch water way we weight well went "
    "were what when where which while white who whole why will with without word work world "
    "would write year yet you young your"
)
_WORDS: Final = tuple(_WORD_TEXT.split())


def corpus_lines() -> Iterator[str]:
    """The training corpus: fixed passages, then seeded sentences over a fixed word list."""
    yield from _PASSAGES
    rng = random.Random(1234)
    for number in range(0, 1000, 37):
        yield f"{number} {number * 3 + 1} {number / 8:.2f} {hex(number)}"
    vocabulary = list(_WORDS) + [_pseudo_word(rng) for _ in range(1500)]
    for _ in range(6000):
        length = rng.randint(4, 14)
        words = [rng.choice(vocabulary) for _ in range(length)]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        glue = rng.choice((" ", " ", " ", ", ", "_", "-", "."))
        ending = rng.choice((".", "?", "!", ":", ";", "", "\n"))
        yield glue.join(words) + ending


_ONSETS: Final = ("", "b", "br", "ch", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "st", "t", "v", "z")
_VOWELS: Final = ("a", "e", "i", "o", "u", "ai", "ou")
_SYLLABLES: Final = tuple(onset + vowel for onset in _ONSETS for vowel in _VOWELS)


def _pseudo_word(rng: random.Random) -> str:
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    return word + rng.choice(("", "", "n", "r", "s", "t", "ng"))


@functools.cache
def _corpus_digest() -> str:
    digest = hashlib.sha256()
    for line in corpus_lines():
        digest.update(line.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
