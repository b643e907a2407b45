"""The frame codec: re-chunked round trips and hostile bytes."""

from __future__ import annotations

from fuzz._registry import Target, given_target
from tests.wire import test_frames

TARGETS: list[Target] = [
    given_target(
        "codec-split",
        "valid frames, split and coalesced at random, decode the same",
        test_frames.test_any_split_or_coalescing_decodes_to_the_same_frames,
    ),
    given_target(
        "codec-edges",
        "frames at the edges of each type's rules, judged by a second decoder",
        test_frames.test_frames_at_the_edges_of_the_rules_are_judged_as_protocol_md_says,
    ),
    given_target(
        "codec-hostile",
        "garbage and mutated frames: the frames, or the refusal, a second decoder finds",
        test_frames.test_hostile_bytes_either_decode_or_raise_remote_protocol_error,
    ),
]
