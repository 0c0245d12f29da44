"""One bad message never stops a leader or a worker: a batch that fails for an unexpected reason is handled again
one delivery at a time, and only the deliveries that fail alone go to ``haorch.dead``.

    handle_isolated(batch, process, publisher, consumer, who="leader", acting=acting)

``process(deliveries)`` handles deliveries and acknowledges them through the last one, as for a whole batch. If
it raises a :class:`~node.errors.DependencyError` or a :class:`~node.errors.FencedError` (not the messages'
fault) that propagates at once: the caller retries its term or reconnects, and the batch is redelivered. Any
other exception (a bug, a value the decoder let through that a store rejects) makes each delivery be processed
alone, in order, so that cumulative acks never cover a delivery not handled yet; one that fails again is
dead-lettered with ``"<ExceptionType>: <message>"`` as its reason and acknowledged, the others advance. A crash
during that pass leaves the rest unacknowledged: it is redelivered, and what was handled already is replayed as
duplicates. Each isolated message logs one line; the first failure of each exception type also its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.errors import DependencyError, FencedError
from node.metrics import DEAD_LETTERS
from node.stores.ports import Consumer, Publisher
from node.stores.rabbit import Delivery, dead_letter

log = logging.getLogger(__name__)

_traced: set[str] = set()  # exception types whose traceback this process logged already


def handle_isolated(batch: list[Delivery], process: Callable[[list[Delivery]], None], publisher: Publisher,
                    consumer: Consumer, who: str, acting: Callable[[], bool] = lambda: True) -> int:
    """Process ``batch``, isolating the deliveries that make it fail (see the module docstring); returns how many
    were dead-lettered that way."""
    try:
        process(batch)
        return 0
    except (DependencyError, FencedError):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is the fault of one of the messages
        if len(batch) == 1:
            _quarantine(batch[0], exc, publisher, consumer, who)
            return 1
        log.warning("%s: a batch of %d failed (%s: %s); handling its messages one by one", who, len(batch),
                    type(exc).__name__, _first_line(exc))
    isolated = 0
    for delivery in batch:
        if not acting():
            break
        try:
            process([delivery])
        except (DependencyError, FencedError):
            raise
        except Exception as exc:  # noqa: BLE001 - see above
            _quarantine(delivery, exc, publisher, consumer, who)
            isolated += 1
    return isolated


def _quarantine(delivery: Delivery, exc: Exception, publisher: Publisher, consumer: Consumer, who: str) -> None:
    name = type(exc).__name__
    if name not in _traced:
        _traced.add(name)
        log.error("%s: a message from %s failed alone (%s); dead-lettering it", who, delivery.queue, name,
                  exc_info=exc)
    dead_letter(publisher, delivery, f"{name}: {exc}")
    consumer.ack_through(delivery.tag)
    DEAD_LETTERS.inc()


def _first_line(exc: Exception) -> str:
    line = (str(exc).splitlines() or ["no message"])[0][:200]
    return line.encode("utf-8", "backslashreplace").decode("utf-8")
