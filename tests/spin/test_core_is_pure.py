import subprocess
import sys


def test_core_imports_only_torch_and_the_standard_library():
    code = (
        "import sys, jobs.spin;"
        "bad = sorted(m for m in ('ray', 'vllm', 'fastapi', 'transformers', 'pydantic', 'yaml', 'numpy.random')"
        " if m in sys.modules); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"jobs.spin pulled in: {out.stdout.strip()}"
