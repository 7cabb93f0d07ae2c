"""The control plane: a FastAPI service that starts and tracks SPIN runs as Ray Jobs. It never imports torch."""
