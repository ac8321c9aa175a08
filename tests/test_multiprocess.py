"""Two JAX processes on localhost (``jax.distributed.initialize`` + gloo CPU collectives, 2 simulated
devices each, one 4-device mesh) unlearn together with Sharp MinMax and per-device SAM; they must
agree bit for bit with each other and, to float tolerance, with the same job in one 4-device process;
both write one Orbax checkpoint together (every epoch by the time rule) and resume from it.
Budget: ~30-40 s on 2 CPU cores (the three processes run concurrently).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_mp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    outs = [tmp_path / f"p{i}.json" for i in range(2)] + [tmp_path / "single.json"]
    cmds = [[sys.executable, WORKER, "mp", str(outs[i]), str(port), str(i), "2"] for i in range(2)]
    cmds.append([sys.executable, WORKER, "single", str(outs[2]), "4"])
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    r0, r1, single = (json.loads(o.read_text()) for o in outs)
    assert (r0["process_index"], r1["process_index"]) == (0, 1)
    assert r0["process_count"] == r1["process_count"] == 2
    assert r0["devices"] == r1["devices"] == 4 and r0["local_devices"] == 2
    assert r0["is_main"] and not r1["is_main"]
    assert r0["local_indices"] == [0, 1, 2, 3, 4] and r1["local_indices"] == [5, 6, 7, 8, 9]
    assert r0["checksum"] == r1["checksum"]
    np.testing.assert_array_equal(r0["params"], r1["params"])
    assert r0["accuracy"] == r1["accuracy"]
    assert np.max(np.abs(np.asarray(r0["params"]) - single["params"])) < 1e-5
    # a checkpoint written together by both processes (time rule broadcast from process 0) and resumed
    assert r0["flag_main_true"] is r1["flag_main_true"] is True
    assert r0["flag_other_true"] is r1["flag_other_true"] is False
    # streaming on the 2-process mesh: the gather's numbers, each process reading only its half of each batch
    # (8 steps of 32 retain + 32 forget rows, and the guard's probe: (8 * 64 + 32) / 2 reads per process)
    for r in (r0, r1):
        assert r["stream_vs_gather"] < 1e-5 and r["stream_moved"] > 1e-3
        assert r["stream_reads"] == (8 * 64 + 32) // 2
    assert single["stream_reads"] == 8 * 64 + 32
    for r in (r0, r1, single):
        assert r["ckpt_steps"] == [1, 2] and r["ckpt_resumed_from"] == 2
        assert r["ckpt_restored_maxdiff"] == 0.0 and r["ckpt_moved"] > 0
