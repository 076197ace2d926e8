"""The ring hands a reader its frame in place: the slot stays intact, and the writer
waits, until that reader asks for the next message."""

from __future__ import annotations

import pickle
import threading
import time
from array import array

from rt.core.step import SeqStep, StepMetadata

from rt_shm_broadcast.codec import Encoder
from rt_shm_broadcast.decode import Decoder
from rt_shm_broadcast.ring import Ring


def _step(step_id: int, blocks: int) -> StepMetadata:
    return StepMetadata.from_seqs(
        step_id, [SeqStep(i, (i + 1,), 16 * blocks - 1, tuple(range(blocks))) for i in range(3)]
    )


def test_a_received_step_stays_intact_until_the_next_receive(tmp_path):
    writer = Ring.create(1, 2, 4096, shm_dir=str(tmp_path))
    reader = Ring.attach(writer.name, 0, shm_dir=str(tmp_path))
    enc, dec = Encoder(), Decoder()
    steps = [_step(i, 4 + i) for i in range(3)]
    for step in steps[:2]:
        writer.publish(lambda buf, step=step: enc.encode(step, buf))
    first = reader.receive(dec.decode)
    assert isinstance(first.block_ids, memoryview)  # decoded in place, no copy

    third = threading.Thread(target=writer.publish, args=(lambda buf: enc.encode(steps[2], buf),))
    third.start()
    time.sleep(0.3)
    # Both slots are taken (the reader still holds step 0): the writer waits.
    assert third.is_alive() and writer.count == 2
    assert first == steps[0]
    assert reader.receive(dec.decode) == steps[1]  # releases step 0's slot
    third.join(5)
    assert not third.is_alive() and writer.count == 3
    assert reader.receive(dec.decode) == steps[2]
    writer.close()


def test_owned_copies_a_received_step_into_arrays(tmp_path):
    writer = Ring.create(1, 2, 4096, shm_dir=str(tmp_path))
    reader = Ring.attach(writer.name, 0, shm_dir=str(tmp_path))
    enc, dec = Encoder(), Decoder()
    writer.publish(lambda buf: enc.encode(_step(0, 5), buf))
    owned = reader.receive(dec.decode).owned()
    assert type(owned.block_ids) is array and owned.block_ids.typecode == "i"
    assert type(owned.seq_ids) is array and owned.seq_ids.typecode == "q"
    assert pickle.loads(pickle.dumps(owned)) == owned == _step(0, 5)
    writer.close()
