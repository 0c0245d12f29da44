"""EpochCounter against a real ensemble: strictly increasing, unique, across clients and threads."""

import itertools
import threading

from election import EpochCounter, make_client


def test_next_is_unique_and_increasing_across_clients_and_threads(zk, paths):
    clients = [make_client(zk.hosts, 2.0, f"epoch-{i}") for i in range(3)]
    try:
        counters = [EpochCounter(client, paths[1]) for client in clients]
        threads_n, per_thread = 6, 10
        start = threading.Barrier(threads_n)  # all race to create the missing znode too
        results: dict[int, list[int]] = {}

        def work(i: int) -> None:
            start.wait()
            results[i] = [counters[i % 3].next() for _ in range(per_thread)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert sorted(results) == list(range(threads_n))
        values = [v for seq in results.values() for v in seq]
        assert len(values) == threads_n * per_thread
        assert len(set(values)) == len(values), "an epoch was handed out twice"
        assert min(values) >= 1
        for seq in results.values():
            assert all(a < b for a, b in itertools.pairwise(seq)), f"not increasing within a thread: {seq}"
        assert counters[1].current() == max(values)
        assert counters[2].next() > max(values)
    finally:
        for client in clients:
            client.stop()
            client.close()


def test_current_is_zero_before_first_next(zk, paths):
    client = make_client(zk.hosts, 2.0, "epoch-fresh")
    try:
        counter = EpochCounter(client, paths[1])
        assert counter.current() == 0
        assert counter.next() == 1
        assert counter.current() == 1
    finally:
        client.stop()
        client.close()
