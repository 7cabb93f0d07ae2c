#!/usr/bin/env bash
# Start a local Ray head with the project's settings: every listener on 127.0.0.1, the dashboard and its Jobs
# API on :8265, metrics on :8080, no usage reporting. Stop it with `ray stop`.
#
#   cluster/start-head.sh [NUM_CPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -c "
import sys
from cluster.runtime import start_head
print(start_head(num_cpus=float(sys.argv[1]) if len(sys.argv) > 1 else None))
" "$@"
