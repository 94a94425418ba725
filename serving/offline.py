"""A vLLM scheduler without a model: built from a config, stepped with made-up model outputs.

For the adapter's tests and its overhead benchmark (benchmarks/adapter_overhead.py): the
scheduler is vLLM's real one (or the adapter), its KV cache manager is real, only the model
runner is replaced by ``fake_output``, which samples token 7 for every request that finished
its prefill chunk.  A model directory needs only a ``config.json`` (``write_config``).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_config(path: str | Path, *, layers: int = 2, hidden: int = 128, heads: int = 2, kv_heads: int = 1,
                 vocab: int = 512, max_len: int = 4096) -> Path:  # fmt: skip
    """A Llama ``config.json`` (no weights): enough for ``ModelConfig``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": hidden,
                "intermediate_size": 2 * hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "num_key_value_heads": kv_heads,
                "vocab_size": vocab,
                "max_position_embeddings": max_len,
                "torch_dtype": "bfloat16",
                "bos_token_id": 1,
                "eos_token_id": 2,
            }
        )
    )
    return path


def make_scheduler(
    scheduler_cls,
    model_dir: str | Path,
    *,
    num_blocks: int = 10_000,
    block_size: int = 16,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    max_model_len: int = 4096,
    additional_config: dict | None = None,
    enable_prefix_caching: bool = False,
    async_scheduling: bool = False,
    policy: str = "fcfs",
):
    """A scheduler of class ``scheduler_cls`` over a KV cache of ``num_blocks`` blocks (``policy``: vLLM's own
    queue order, ``fcfs`` or ``priority``)."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    model_config = ModelConfig(
        model=str(model_dir), tokenizer=str(model_dir), skip_tokenizer_init=True, dtype="bfloat16",
        max_model_len=max_model_len, seed=0,
    )  # fmt: skip
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
        enable_chunked_prefill=True, is_encoder_decoder=False, async_scheduling=async_scheduling, policy=policy,
    )  # fmt: skip
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching)
    config = VllmConfig(
        model_config=model_config, cache_config=cache_config, scheduler_config=scheduler_config,
        additional_config=additional_config or {},
    )  # fmt: skip
    config.cache_config.num_gpu_blocks = num_blocks
    # The CPU platform turns async scheduling off; a model-less scheduler can have it anyway.
    config.scheduler_config.async_scheduling = async_scheduling
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=64, dtype=torch.bfloat16)
    groups = [KVCacheGroupSpec(["layer.0"], spec)]
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    return scheduler_cls(
        vllm_config=config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(config),
        block_size=block_size, log_stats=False,
    )  # fmt: skip


def make_request(request_id: str, prompt_tokens: int, max_tokens: int, *, tenant: str | None = None,
                 weight: float = 1.0, arrival_time: float | None = None, priority: int = 0):  # fmt: skip
    """A vLLM ``Request`` (token ids 10, 11, ...; ``ignore_eos``), its tenant in extra_args (``priority``: for
    vLLM's priority policy, lower first)."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    from serving.bridge import TENANT_KEY, WEIGHT_KEY

    extra = {TENANT_KEY: tenant, WEIGHT_KEY: weight} if tenant is not None else None
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra)
    ids = [10 + (i % 400) for i in range(prompt_tokens)]
    return Request(request_id, ids, params, None, arrival_time=arrival_time, priority=priority)


def fake_output(scheduler_output):
    """The model's output for a step: token 7 for every request whose scheduled tokens end its prefill."""
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(scheduler_output.num_scheduled_tokens)
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={rid: i for i, rid in enumerate(ids)},
                             sampled_token_ids=[[7] for _ in ids])  # fmt: skip


def step(scheduler):
    """One engine step: schedule, fake model, update; returns (scheduler output, engine core outputs)."""
    out = scheduler.schedule()
    model = fake_output(out)
    # Requests still in a prefill chunk sample nothing.
    for i, rid in enumerate(model.req_ids):
        req = scheduler.requests.get(rid)
        if req is not None and req.num_computed_tokens < req.num_tokens:
            model.sampled_token_ids[i] = []
    return out, scheduler.update_from_output(out, model)
