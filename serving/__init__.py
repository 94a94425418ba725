"""Real engines: the vLLM scheduler adapter, tenants, `equinox serve`, real-engine replays, calibration.

Nothing here imports vLLM at import time; the modules that need it (``vllm_adapter``,
``offline``, ``replay_vllm``) import it themselves.  docs/SERVING.md describes the whole.

* ``bridge``: our policies as a real engine's waiting queue (no vLLM).
* ``vllm_adapter``: ``FairRequestQueue`` and ``FairScheduler`` for vLLM's ``scheduler_cls``.
* ``logs``: the simulator's results format, written as a real engine runs.
* ``tenants``: the tenants file and the ASGI middleware that stamps tenants into requests.
* ``server``: ``equinox serve``'s command line for vLLM's OpenAI server.
* ``replay_vllm``: ``equinox replay --engine vllm``.
* ``endpoint``: ``equinox replay --endpoint URL`` (standard library only).
* ``calibrate``: ``equinox calibrate``.
* ``offline``: a model-less vLLM scheduler for tests and benchmarks/adapter_overhead.py.
* ``tiny_model``: a tiny random-weight Llama with a locally trained tokenizer.
"""
