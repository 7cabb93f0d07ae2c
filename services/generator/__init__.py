"""The generator: a Ray Serve deployment running vLLM. Only deployment.py imports vllm."""
