"""thaw's reference inference engine: a compact but real LLM server to snapshot.

Everything that makes a GPU inference worker slow to start — and hard to snapshot —
is here: safetensors weights read from disk, a paged KV cache allocated through
thaw's VMM pool, decode steps captured as CUDA graphs, a warm-up, and a canary that
fingerprints the warmed state. The model is Qwen3 (real shapes, random weights); the
API is OpenAI-style completions over HTTP. docs/engine.md describes it; the modules::

    config      ModelConfig, the named configs, config.json
    weights     make_weights (seeded random checkpoints), reading checkpoints
    model       the Qwen3 decoder: prefill and paged decode
    kv_cache    the paged KV cache and its block allocator
    graphs      decode steps as CUDA graphs
    engine      requests, continuous batching, sampling
    canary      the fixed-prompt fingerprint recorded at quiesce time
    loop        the engine thread
    server      the FastAPI app
    metrics     Prometheus metrics
    options     ServeOptions (torch-free)
    startup     process start: CPU ISA pin, cold-start clock
    lifecycle   warm up → quiesce → serve

Importing this package imports nothing heavy; ``python -m thaw.engine serve`` starts a worker.
"""
