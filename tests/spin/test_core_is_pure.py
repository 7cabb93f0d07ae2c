import subprocess
import sys


def test_core_imports_only_torch_and_the_standard_library():
    code = (
        "import sys, jobs.spin; from jobs.spin import *;"
        "bad = sorted(m for m in ('ray', 'vllm', 'fastapi', 'transformers', 'pydantic', 'yaml', 'numpy.random')"
        " if m in sys.modules); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"jobs.spin pulled in: {out.stdout.strip()}"


def test_the_rules_load_without_torch():
    code = "import sys, jobs.spin.stopping, jobs.spin.guard, jobs.spin.pairs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
