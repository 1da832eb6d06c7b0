"""The PyTorch backend, by concern: the engine (backend.py), CUDA graphs (cuda_graphs.py), the
background compiler (compiler.py) and the batch shapes the compiled graphs are made for
(batching.py)."""
