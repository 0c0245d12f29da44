"""A candidate in its own process, for tests that kill -9 a leader.

Usage: python candidate_proc.py HOSTS SESSION_TIMEOUT_S IDENTIFIER ELECTION_PATH EPOCH_PATH
Prints ``ELECTED <epoch>`` and ``REVOKED <reason>`` lines (flushed) and runs until killed.
"""

import sys
import threading

from election import LeaderElection, make_client


def main() -> None:
    hosts, timeout_s, identifier, path, epoch_path = sys.argv[1:6]
    client = make_client(hosts, float(timeout_s), identifier)
    LeaderElection(
        client,
        identifier,
        path,
        epoch_path,
        on_elected=lambda epoch: print(f"ELECTED {epoch}", flush=True),
        on_revoked=lambda reason: print(f"REVOKED {reason}", flush=True),
    ).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
