"""Sizing onnxruntime to the CPUs a process may really use: its affinity mask and its cgroup's quota, not
the machine's CPU count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from aiserve_mcp.runtime.cpus import cgroup_cpu_quota, quota_from_cfs, quota_from_cpu_max, usable_cpus
from tests.runtime.test_runtime import mlp_file

SESSION_OF_PINNED_PROCESS = """
import json, sys
from pathlib import Path
from aiserve_mcp.runtime.cpus import usable_cpus
from aiserve_mcp.runtime.onnx_model import OnnxModel

model = OnnxModel.load(Path(sys.argv[1]), prefer_gpu=False)
options = model._session.get_session_options()
print(json.dumps({
    "cpus": usable_cpus(),
    "threads": options.intra_op_num_threads,
    "spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
}))
"""


def test_cgroup_quota_lines_read_as_cpus() -> None:
    assert quota_from_cpu_max("150000 100000") == 1.5
    assert quota_from_cpu_max("max 100000") is None
    assert quota_from_cfs("50000", "100000") == 0.5
    assert quota_from_cfs("-1", "100000") is None


def test_the_quota_is_read_from_cgroup_v2_and_v1_files(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup filesystem: no quota
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # v2 wins where it exists
    assert cgroup_cpu_quota(tmp_path) == 0.5


def test_an_unpinned_process_may_use_its_affinity_mask() -> None:
    quota = cgroup_cpu_quota()
    expected = (
        len(os.sched_getaffinity(0)) if quota is None else min(len(os.sched_getaffinity(0)), int(quota))
    )
    assert usable_cpus() == max(1, expected)


def test_a_process_pinned_to_one_core_runs_onnxruntime_on_one_thread_without_spinning(tmp_path: Path) -> None:
    taskset = shutil.which("taskset")
    assert taskset is not None, "taskset (util-linux) is needed to pin a process"
    model = mlp_file(tmp_path / "mlp.onnx")
    pinned = subprocess.run(
        [taskset, "-c", "0", sys.executable, "-c", SESSION_OF_PINNED_PROCESS, str(model)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(pinned.stdout) == {"cpus": 1, "threads": 1, "spinning": "0"}
    # os.cpu_count() still says 2 in that process: sizing from it would have run two threads on core 0
    assert (os.cpu_count() or 0) >= 2
