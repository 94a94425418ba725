"""A tiny random-weight Llama with a locally trained tokenizer, for tests and CPU demos.

Nothing is downloaded: the tokenizer is a word-level vocabulary trained on made-up words,
the weights are random (seeded).  The model talks nonsense, which is all a scheduler test
needs: real engine steps, real KV cache, real token counts.

``make_tiny_llama(path)`` writes ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` (with a chat template) and ``generation_config.json``.  It needs
``torch``, ``transformers`` and ``tokenizers``, which ``vllm`` brings.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tiny_llama(
    path: str | Path,
    *,
    vocab_words: int = 1021,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama model directory at ``path`` (created) and return it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    words = [f"w{i}" for i in range(vocab_words)]
    words[:8] = ["user", "assistant", "system", ":", "hello", "fair", "share", "token"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=len(words) + len(SPECIAL), special_tokens=SPECIAL, min_frequency=1)
    tok.train_from_iterator([" ".join(words)], trainer)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "<unk>",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": max_position_embeddings,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<unk>"),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    return path


def vocab_size(path: str | Path) -> int:
    """The model's vocabulary size, from its config.json."""
    return int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
