"""The generator: a Ray Serve deployment running vLLM (`deployment`, the only module that imports vllm), its typed
arguments and messages (`schemas`), the application builder Serve's loader calls (`app`), and the client that
deploys it, moves it to new weights and stops it (`client`). Imports only cluster/."""
