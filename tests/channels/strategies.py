"""Hypothesis strategies for valid step metadata and control messages."""

from __future__ import annotations

from hypothesis import strategies as st
from rt.core.channel import ControlMessage
from rt.core.step import SamplingParams, SeqStep, StepMetadata

INT32 = st.integers(0, 2**31 - 1)
small_ints = st.integers(0, 300_000)

sampling_params = st.builds(
    SamplingParams,
    temperature=st.floats(0, 10, allow_nan=False),
    top_p=st.floats(0, 1, exclude_min=True),
    top_k=st.integers(0, 2**40),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    max_tokens=st.integers(0, 2**40),
    stop=st.lists(st.text(max_size=12), max_size=3).map(tuple),
    stop_token_ids=st.lists(INT32, max_size=4).map(tuple),
    ignore_eos=st.booleans(),
    want_logprobs=st.booleans(),
    logprobs=st.integers(0, 20),
    presence_penalty=st.floats(-2, 2),
    frequency_penalty=st.floats(-2, 2),
    repetition_penalty=st.floats(0.01, 2),
    min_p=st.floats(0, 1),
    min_tokens=st.integers(0, 2**40),
    prompt_logprobs=st.none() | st.integers(0, 20),
    logit_bias=st.dictionaries(INT32, st.floats(-100, 100), max_size=3).map(
        lambda d: tuple(d.items())
    ),
)


@st.composite
def step_metadata(draw, max_seqs: int = 8) -> StepMetadata:
    """A step with distinct seq ids; its sequences may share one params object."""
    ids = draw(st.lists(st.integers(0, 2**62), unique=True, max_size=max_seqs))
    shared = draw(sampling_params)
    seqs = tuple(
        SeqStep(
            seq_id=sid,
            token_ids=tuple(draw(st.lists(small_ints, min_size=0, max_size=6))),
            start_pos=draw(st.integers(0, 2**30)),
            block_table=tuple(draw(st.lists(INT32, max_size=10))),
            sample=draw(st.booleans()),
            num_generated=draw(st.integers(0, 2**30)),
            sampling=draw(st.just(shared) | sampling_params),
        )
        for sid in ids
    )
    return StepMetadata.from_seqs(draw(st.integers(-(2**63), 2**63 - 1)), seqs)


control_messages = st.builds(
    ControlMessage,
    kind=st.sampled_from(["ping", "shutdown", "abort", "heartbeat"]),
    seq_id=st.integers(-1, 2**62),
    schema_version=st.integers(0, 100),
    plugins=st.lists(st.text(max_size=20), max_size=5).map(tuple),
)


@st.composite
def evolving_steps(draw, max_steps: int = 6) -> list[StepMetadata]:
    """Consecutive steps that keep some sequences (same table and params objects, or
    equal copies), drop some and add new ones: what a stateful codec must follow."""
    steps = [draw(step_metadata())]
    for _ in range(draw(st.integers(0, max_steps - 1))):
        prev = steps[-1]
        kept = []
        for s in prev.seqs:
            action = draw(st.sampled_from(["same", "copy", "grow", "drop"]))
            if action == "drop":
                continue
            table = {
                "same": s.block_table,
                "copy": tuple(list(s.block_table)),
                "grow": s.block_table + (draw(INT32),),
            }[action]
            kept.append(
                SeqStep(s.seq_id, (draw(small_ints),), s.start_pos + 1, table, True,
                        s.num_generated + 1, s.sampling)
            )  # fmt: skip
        fresh = draw(step_metadata(max_seqs=3))
        taken = {s.seq_id for s in kept}
        kept += [s for s in fresh.seqs if s.seq_id not in taken]
        steps.append(StepMetadata.from_seqs(prev.step_id ^ 1, kept))
    return steps
