"""How this process was launched: how many processes its launcher started (`launched_world_size`), the launches
that meant several processes but started each one alone (`check_launch`), and this process in words for messages
(`describe_process`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_SIZE")
"""Where a launcher says how many processes it started, in the order Accelerate reads them: torchrun (what
`accelerate launch --multi_gpu` runs), then the MPI launchers of `accelerate launch --mpirun_hostfile`."""


def launched_world_size(env: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    env = os.environ if env is None else env
    for name in WORLD_SIZE_VARIABLES:
        if env.get(name):
            return int(env[name])
    return 1


def check_launch(env: Mapping[str, str] | None = None) -> None:
    """Raise ValueError for a launch that asked for several processes or machines and started this one alone.

    `accelerate launch --cpu` (or any launch without --multi_gpu where no GPU is found) goes through Accelerate's
    single-process launcher: with `--num_processes 2` or `--num_machines 2` it sets MASTER_ADDR for a process group
    but starts one plain process per call, with no rank and no world size. Each such process then trains (or
    upscales) alone and writes everything as the main process, and nothing says so. That launcher is recognised
    by what it leaves: ACCELERATE_USE_CPU and MASTER_ADDR, and no launcher's world size.
    """
    env = os.environ if env is None else env
    if "ACCELERATE_USE_CPU" not in env or not env.get("MASTER_ADDR"):
        return
    if any(env.get(name) for name in WORLD_SIZE_VARIABLES):
        return
    raise ValueError(
        "accelerate launch started this process alone although it was asked for several processes or machines "
        "(MASTER_ADDR is set, no WORLD_SIZE): its single-process launcher (--cpu, or no --multi_gpu) starts one "
        "unsynchronised process per call. On CPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
        "--num_processes N --num_machines M ... (README, 'Several processes' and 'Several machines'); for one process, "
        "leave out --num_processes and --num_machines, or unset MASTER_ADDR"
    )


def describe_process(state: Any) -> str:
    """`state` (Accelerate's PartialState or Accelerator) in words, for messages naming the machine where something
    happened: "node 1 (process 1 on HOST)"; the node is torchrun's GROUP_RANK (`accelerate launch --machine_rank`)."""
    host = socket.gethostname()
    node = os.environ.get("GROUP_RANK")
    if node is None or state.num_processes == 1:
        return f"process {state.process_index} on {host}"
    return f"node {node} (process {state.process_index} on {host})"
