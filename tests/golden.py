"""Golden final parameters: the fixed small jobs whose results must not change.

One small job per algorithm (and sgd/dasgd with a codec and error feedback). Their
final parameters on every rank were recorded on 4 ranks with the MPICH wheel before
the roles refactoring (issue 11) and are kept as ``tests/golden/<job>.npz``
(``rank0`` .. ``rank3``); ``tests/test_mpi_golden.py`` retrains them and compares
bit for bit. The bits also depend on numpy, its BLAS and the MPI library: their
versions at recording are in ``tests/golden/versions.json``, and a failure names both
those and the ones in use. To record them again (only when a change of results is intended, and
say so in the commit)::

    mpiexec -n 4 python tests/golden.py
"""

from __future__ import annotations

from pathlib import Path

from mpiml.config import Config, load_config

GOLDEN = Path(__file__).parent / "golden"
RANKS = 4

_COMMON = (
    "run.steps=40",
    "run.eval_every=10",
    "model.hidden=[16]",
    "data.batch_size=8",
    "checkpoint.every=0",
)

# job name -> overrides (after the embedded default job and _COMMON)
JOBS: dict[str, tuple[str, ...]] = {
    "sgd": ("algorithm.name=sgd",),
    "sgd_adam_dirichlet": (
        "algorithm.name=sgd",
        "optimizer.name=adam",
        "optimizer.lr=0.01",
        "data.partition=dirichlet",
    ),
    "sgd_linear": (
        "algorithm.name=sgd",
        "model.name=linear",
        "data.name=synthetic",
        "optimizer.name=sgd",
        "optimizer.lr=0.05",
    ),
    "local_sgd": ("algorithm.name=local_sgd", "algorithm.tau=4"),
    "dasgd": ("algorithm.name=dasgd",),
    "dasgd_d2_thread": ("algorithm.name=dasgd", "algorithm.delay=2", "algorithm.progress=thread"),
    "dpsgd": ("algorithm.name=dpsgd", "optimizer.name=sgd", "optimizer.lr=0.1"),
    "dpsgd_exponential": (
        "algorithm.name=dpsgd",
        "algorithm.topology=exponential",
        "optimizer.name=sgd",
        "optimizer.lr=0.1",
    ),
    "gossip": (
        "algorithm.name=gossip",
        "algorithm.period=2",
        "algorithm.gossip_method=neighbor",
        "algorithm.gamma=0.5",
    ),
    "qsgd": ("algorithm.name=qsgd", "optimizer.name=sgd", "optimizer.lr=0.1"),
    "pr_sgd": ("algorithm.name=pr_sgd", "optimizer.name=sgd", "optimizer.lr=0.1"),
    "qpr_sgd": ("algorithm.name=qpr_sgd", "optimizer.name=sgd", "optimizer.lr=0.1"),
    "dqpr_sgd": ("algorithm.name=dqpr_sgd", "optimizer.name=sgd", "optimizer.lr=0.1"),
    "sgd_topk_ef": (
        "algorithm.name=sgd",
        "compression.codec=topk",
        "compression.ratio=0.1",
        "compression.error_feedback=true",
    ),
    "dasgd_qsgd_ef": ("algorithm.name=dasgd", "compression.codec=qsgd", "compression.error_feedback=true"),
    "local_sgd_fp16": ("algorithm.name=local_sgd", "compression.codec=fp16"),
}


def job(name: str) -> Config:
    return load_config(None, [f"run.name={name}", *_COMMON, *JOBS[name]])


def versions() -> dict[str, str]:
    """What the golden bits depend on besides mpiml: numpy, its BLAS, the MPI library."""
    import numpy as np
    import threadpoolctl
    from mpi4py import MPI

    blas = ", ".join(f"{i['internal_api']} {i['version']}" for i in threadpoolctl.threadpool_info())
    return {"numpy": np.__version__, "blas": blas, "mpi": MPI.Get_library_version().splitlines()[0].strip()}


def main() -> None:
    import os
    import tempfile

    import numpy as np

    from mpiml.comm import default_comm
    from mpiml.trainer import train

    comm = default_comm()
    if comm.Get_size() != RANKS:
        raise SystemExit(f"record the golden files on {RANKS} ranks (mpiexec -n {RANKS})")
    out = comm.bcast(tempfile.mkdtemp(prefix="mpiml-golden-") if comm.Get_rank() == 0 else None)
    GOLDEN.mkdir(exist_ok=True)
    if comm.Get_rank() == 0:
        import json

        (GOLDEN / "versions.json").write_text(json.dumps(versions(), indent=1, sort_keys=True) + "\n")
    with open(os.devnull, "w") as null:
        for name in JOBS:
            res = train(job(name), comm, out=out, stream=null)
            params = comm.gather(res.params, root=0)
            if comm.Get_rank() == 0:
                assert params is not None
                np.savez_compressed(GOLDEN / f"{name}.npz", **{f"rank{r}": p for r, p in enumerate(params)})
                print(f"{name}: recorded {params[0].size} {params[0].dtype} parameters per rank", flush=True)


if __name__ == "__main__":
    main()
