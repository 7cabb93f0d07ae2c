"""The long-running services: the generator (`generator/`, Ray Serve + vLLM) and the control plane
(`control_plane/`, FastAPI)."""
