"""The responses in message bodies of ``haorch.responses`` (packs or single objects), for assertions."""

from __future__ import annotations

from node.model.messages import TaskResponse, unpack_responses


def responses_in(*bodies: bytes) -> list[TaskResponse]:
    """Every response the bodies hold, in order; AssertionError on an item that is not one."""
    out: list[TaskResponse] = []
    for body in bodies:
        for item in unpack_responses(body):
            assert isinstance(item, TaskResponse), item
            out.append(item)
    return out
