#!/usr/bin/env bash
# The benches on a lent GPU machine (one H200), in one call of the device tool, under 10 minutes:
#
#   run(command="bash tests/bench/gpu.sh", carry=[".whl"], timeout_s=580)
#
# The machine starts bare and reaches nothing outside: packages it lacks travel as wheels in .whl/ (see
# /work/.library/device/README.md), the model is built there (SmolLM2's 93 MB wheel is over the 64 MiB carry
# limit), and results come back in $OUT. Cases whose engine cannot be carried (CUDA vLLM, Ray) are skipped and
# say so in the table. bf16 compute, NCCL for the collective check.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'PY'
import os, torch, torch.distributed as dist
assert torch.cuda.is_available(), "no CUDA device"
x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
print("bf16 matmul ok:", float((x @ x).float().norm()) > 0)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.ones(1, device="cuda"); dist.all_reduce(t); print("nccl all_reduce ok:", t.item() == 1.0)
dist.destroy_process_group()
PY
python3 -m tests.bench.run generation training --model llama-270m --skip-missing --out "${OUT:-/tmp}/bench-gpu.json"
