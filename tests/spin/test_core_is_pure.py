import subprocess
import sys


def test_core_imports_only_torch_and_the_standard_library():
    code = (
        "import importlib, pkgutil, sys, jobs.spin\n"
        "for m in pkgutil.iter_modules(jobs.spin.__path__): importlib.import_module('jobs.spin.' + m.name)\n"
        "bad = sorted(m for m in ('ray', 'vllm', 'fastapi', 'transformers', 'pydantic', 'yaml',"
        " 'cluster', 'services', 'jobs.config') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"jobs.spin pulled in: {out.stdout.strip()}"


def test_the_rules_and_names_load_without_torch():
    code = (
        "import sys, jobs.spin.stopping, jobs.spin.guard, jobs.spin.pairs, jobs.spin.schedule, jobs.spin.names;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
