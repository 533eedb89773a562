"""The pipeline's FIFO channels (mpiml.protocols.channel) on 2 real ranks: order and
micro-batch ids, the schedule check on ids, end marks, the depth bound of a sender's
ring, and drain / state / load (what a DSP checkpoint keeps of the messages in flight)."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.protocols.base import Messages
from mpiml.protocols.channel import Receiver, Sender
from mpiml.testing import assert_all
from mpiml.trace import Trace

pytestmark = pytest.mark.mpi(min_size=2)
RANK_COUNTS = (2,)
WIDTH, ROWS = 3, 4


def _ends(comm: MPI.Comm, tag: int, depth: int = 2) -> Sender | Receiver | None:
    tr = Trace()
    msgs = Messages(tr, comm.Get_size())
    rank = comm.Get_rank()
    if rank == 0:
        return Sender(comm, 1, tag, depth, WIDTH, ROWS, np.float64, tr, msgs)
    if rank == 1:
        return Receiver(comm, 0, tag, depth, WIDTH, ROWS, np.float64, tr, msgs)
    return None


def _msg(i: int, rows: int = ROWS) -> np.ndarray:
    return np.arange(rows * WIDTH, dtype=np.float64).reshape(rows, WIDTH) + 100 * i


def test_messages_arrive_in_order_with_their_ids_and_rows(comm: MPI.Comm) -> None:
    end = _ends(comm, 71)
    ok = True
    if isinstance(end, Sender):
        for i in range(7):
            end.send(0, i, _msg(i, 1 + i % ROWS))
        end.send(0, 7, None)
        end.flush()
    elif isinstance(end, Receiver):
        for i in range(7):
            mb, a = end.take(0, expect=i)
            ok &= mb == i and np.array_equal(a, _msg(i, 1 + i % ROWS))
            end.release()
        mb, a = end.take(0)
        ok &= mb == 7 and a.shape == (0, WIDTH)  # an end mark
        end.release()
        end.cancel()
    assert_all(comm, bool(ok), "wrong order, id or contents")


def test_an_unexpected_micro_batch_is_an_error(comm: MPI.Comm) -> None:
    end = _ends(comm, 72)
    ok = True
    if isinstance(end, Sender):
        end.send(0, 3, _msg(3))
        end.flush()
    elif isinstance(end, Receiver):
        with pytest.raises(RuntimeError, match="micro-batch 3 arrived where the schedule expects 2"):
            end.take(0, expect=2)
        end.release()
        end.cancel()
    assert_all(comm, bool(ok), "")


def test_a_message_larger_than_the_buffers_is_refused(comm: MPI.Comm) -> None:
    end = _ends(comm, 73)
    if isinstance(end, Sender):
        with pytest.raises(ValueError, match=r"at most \(4, 3\)"):
            end.send(0, 0, np.zeros((ROWS + 1, WIDTH)))
    elif isinstance(end, Receiver):
        end.cancel()
    comm.Barrier()


def test_drain_state_load_keep_the_messages_in_flight(comm: MPI.Comm) -> None:
    """3 messages sent, 1 taken, the other 2 drained into the local queue, saved, and
    loaded into a fresh receiver: it serves them first, then what comes after."""
    end = _ends(comm, 74, depth=3)
    ok = True
    if isinstance(end, Sender):
        for i in range(3):
            end.send(0, i, _msg(i))
        end.flush()  # every message received (drained) on the other side
        comm.send(None, dest=1, tag=9)
        end.send(0, 3, _msg(3, 2))
        end.flush()
    elif isinstance(end, Receiver):
        mb, _ = end.take(0, expect=0)
        end.release()
        end.drain(0, 2)
        state = end.state("q")
        end.cancel()
        tr = Trace()
        fresh = Receiver(comm, 0, 74, 3, WIDTH, ROWS, np.float64, tr, Messages(tr, comm.Get_size()))
        fresh.load("q", state)
        comm.recv(source=0, tag=9)
        for i, rows in ((1, ROWS), (2, ROWS), (3, 2)):
            mb, a = fresh.take(0, expect=i)
            ok &= np.array_equal(a, _msg(i, rows))
            fresh.release()
        fresh.cancel()
        ok &= state["q/mb"].tolist() == [1, 2]
    assert_all(comm, bool(ok), "drained messages lost or reordered")
