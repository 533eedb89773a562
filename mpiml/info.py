"""``mpiml info``: what this MPI set-up can do, as mpiml sees it."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["collect", "format_info"]

_THREAD_LEVELS = {
    0: "MPI_THREAD_SINGLE",
    1: "MPI_THREAD_FUNNELED",
    2: "MPI_THREAD_SERIALIZED",
    3: "MPI_THREAD_MULTIPLE",
}


def library_cuda_support() -> str:
    """What the MPI library says: MPIX_Query_cuda_support() (MPICH, Open MPI), looked up
    through the library mpi4py loaded; 'unknown' where the library has no such call."""
    import ctypes

    from mpi4py import MPI

    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return "unknown (no MPIX_Query_cuda_support)"
    query.restype = ctypes.c_int
    return "yes" if query() == 1 else "no"


def _cuda_aware_mpi() -> str:
    """The library's answer and mpiml's setting: mpiml hands device buffers to MPI only
    when told to, since the query is not reliable everywhere (it is opt-in)."""
    flag = os.environ.get("MPIML_CUDA_AWARE", "")
    on = flag.lower() in ("1", "true", "yes")
    setting = "on (MPIML_CUDA_AWARE=1)" if on else "off (MPIML_CUDA_AWARE=1 turns it on)"
    return f"library says {library_cuda_support()}; mpiml: {setting}"


def collect() -> dict[str, Any]:
    """Facts about MPI, h5py, cupy, the codec kernels, pandas and where the shipped files
    (examples, launch scripts, topologies) are, on this rank. Collective over COMM_WORLD."""
    import h5py
    import mpi4py
    import numpy as np
    from mpi4py import MPI

    from . import __version__
    from .backend import cupy_available

    comm = MPI.COMM_WORLD
    level = MPI.Query_thread()
    try:
        import cupy

        cupy_text = f"cupy {cupy.__version__}, GPU {'visible' if cupy_available() else 'not visible'}"
    except Exception:
        cupy_text = "not installed (pip install 'mpiml[gpu]')"
    from . import compress

    if compress.KERNELS == "numba":
        import numba

        kernels = f"numba {numba.__version__}"
    else:
        kernels = "numpy reference (numba not installed, or MPIML_COMPRESS_KERNELS=numpy)"
    try:
        import pandas

        pandas_text = pandas.__version__
    except ImportError:
        pandas_text = "not installed (pip install 'mpiml[pandas]' for load_run(...).to_pandas())"
    from .resources import resource_path

    try:
        shipped = str(resource_path("examples").parent)
    except FileNotFoundError as exc:
        shipped = str(exc)
    return {
        "rank": comm.Get_rank(),
        "mpiml": __version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "{}.{}".format(*MPI.Get_version()),
        "mpi4py": mpi4py.__version__,
        "ranks": comm.Get_size(),
        "hosts": len(set(comm.allgather(MPI.Get_processor_name()))),
        "thread_level": _THREAD_LEVELS.get(level, str(level)),
        "cuda_aware": _cuda_aware_mpi(),
        "parallel_hdf5": "yes (h5py built with MPI)"
        if h5py.get_config().mpi
        else "no (per-rank files are used)",
        "h5py": f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
        "numpy": np.__version__,
        "cupy": cupy_text,
        "codec_kernels": kernels,
        "pandas": pandas_text,
        "shipped": shipped,
    }


def format_info(r: dict[str, Any]) -> str:
    rows = [
        ("mpiml", r["mpiml"]),
        ("MPI library", r["mpi_library"]),
        ("MPI standard", r["mpi_standard"]),
        ("mpi4py", r["mpi4py"]),
        ("ranks", f"{r['ranks']} on {r['hosts']} host(s)"),
        ("thread level", r["thread_level"]),
        ("CUDA-aware MPI", r["cuda_aware"]),
        ("parallel HDF5", r["parallel_hdf5"]),
        ("h5py", r["h5py"]),
        ("numpy", r["numpy"]),
        ("cupy", r["cupy"]),
        ("codec kernels", r["codec_kernels"]),
        ("pandas", r["pandas"]),
        ("shipped files", f"{r['shipped']} (mpiml examples, mpiml launch)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
