"""The pure core of SPIN: losses, log-probs, pair shaping, collation, metrics, statistics and the run's rules.

Imports torch, numpy (for the statistics) and the standard library only (tests/spin/test_core_is_pure.py and the
import-linter contracts in pyproject.toml enforce it), so the math can be read, tested and reused without Ray, vLLM
or transformers.
Import the submodules themselves: `names`, `pairs`, `schedule`, `guard` and `stopping` need no torch, so the
control plane and the config can use them where torch is absent.
"""
