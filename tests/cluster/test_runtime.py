import subprocess
import time

from cluster.runtime import kill_orphaned_engines


def test_an_orphaned_engine_is_killed_and_nothing_else():
    """An engine process re-parented to init (as `ray stop --force` leaves one) is killed; a live child is not."""
    subprocess.run(["bash", "-c", "(exec -a VLLM::EngineCore sleep 120 &)"], check=True)
    child = subprocess.Popen(["bash", "-c", "exec -a VLLM::EngineCore sleep 120"])  # its parent, this test, lives
    time.sleep(0.3)
    killed = kill_orphaned_engines()
    try:
        assert killed and child.pid not in killed and child.poll() is None
        orphans = subprocess.run(["pgrep", "-f", "^VLLM::EngineCore"], capture_output=True, text=True).stdout.split()
        assert orphans == [str(child.pid)]
    finally:
        child.kill()
