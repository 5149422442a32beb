"""``duet submit``: run a duet command on a Ray cluster through `ray job submit`.

The job ships the working folder with ``deploy/runtime_env.yaml`` and runs
``python -m cluster.cli <command> ...`` there. A fresh cluster's job API answers before its
job agent takes jobs, so a refused submission is retried; a submission the cluster accepted
(its id is known) is never sent twice, even if the job then fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

from cluster.contract.config import ConfigError

COMMANDS = ("train", "compare", "eval")


def submit_command(address: Optional[str], duet_args: Sequence[str], working_dir: str = ".",
                   runtime_env: Optional[str] = None, submission_id: Optional[str] = None,
                   no_wait: bool = False) -> List[str]:
    """The `ray job submit` command line running ``duet_args`` on the cluster at ``address``."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--address", "no Ray cluster given: pass --address "
                          "http://HEAD:8265 (the job API) or set RAY_ADDRESS")
    rest = list(duet_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or rest[0] not in COMMANDS:
        raise ConfigError("duet submit", "name the command to run on the cluster, e.g. "
                          "duet submit -- train --config deploy/configs/qwen2.5-math-1.5b-g2.yaml")
    sibling = Path(sys.executable).with_name("ray")
    ray_cli = str(sibling) if sibling.exists() else (shutil.which("ray") or "ray")
    if runtime_env is None:
        from cluster.presets import runtime_env as shipped

        runtime_env = str(shipped())
    cmd = [ray_cli, "job", "submit", "--address", address, "--working-dir", working_dir,
           "--runtime-env", runtime_env]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", "python", "-m", "cluster.cli", *rest]


def new_submission_id() -> str:
    return f"duet-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def submit(cmd: List[str], submission_id: str, retries: int, retry_seconds: float,
           no_wait: bool = False) -> int:
    """Run ``cmd`` (from ``submit_command``), retrying while the cluster refuses the job."""
    env = dict(os.environ)
    # Ray 2.60 clusters started with `ray start` require their token; the client only
    # sends it (from ~/.ray/auth_token) in token mode.
    if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"
    print("$ " + " ".join(cmd), flush=True)
    status = [cmd[0], "job", "status", "--address", cmd[cmd.index("--address") + 1],
              submission_id]
    code = 1
    for attempt in range(retries + 1):
        code = subprocess.call(cmd, env=env)
        if code == 0 or subprocess.call(status, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) == 0:
            break  # done, or accepted and then failed: never submit it twice
        print(f"duet: the cluster did not take the job (attempt {attempt + 1}); retrying in "
              f"{retry_seconds:g} s", flush=True)
        time.sleep(retry_seconds)
    if code == 0 and not no_wait:
        print(f"job {submission_id} finished; its run folder is under the job's "
              "output_dir (see 'run written to' above); `ray job logs` shows the log again")
    return code
