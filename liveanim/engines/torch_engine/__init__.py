"""The PyTorch backend, by concern: the engine (backend.py), CUDA graphs (cuda_graphs.py), the
background compiler (compiler.py), the child process it has compile first (prefill.py), the
times it keeps for the next start (compile_times.py) and the batch shapes the compiled graphs are
made for (batching.py)."""
