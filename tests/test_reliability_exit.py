"""A process that ran wasm plugins using WASI stdout/stderr exits cleanly, every time.

Before WASI output went through pipes, 14 of 20 such processes aborted at interpreter
exit ("panic in a function that cannot unwind" on a tokio worker) or segfaulted. Each run
here is a fresh interpreter (the failure is in its teardown); 24 runs would all pass by
luck with a probability far below one in a million at that failure rate.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import write_plugin_dir

SCRIPT = Path(__file__).parent / "fixtures" / "scripts" / "wasi_exit.py"
RUNS = 24


def test_processes_that_used_wasi_output_exit_zero(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    for i in range(3):
        write_plugin_dir(plugins, f"w{i}", wat="rt_wasi")

    def run(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), str(plugins)],
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(RUNS)))
    bad = [(r.returncode, r.stderr[-400:]) for r in results if r.returncode != 0]
    assert not bad, f"{len(bad)} of {RUNS} runs failed: {bad[:2]}"
    assert all(r.stdout.strip() == "called 3" for r in results)
