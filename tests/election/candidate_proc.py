"""A candidate in its own process, for tests that kill -9 a leader.

Usage: python candidate_proc.py HOSTS SESSION_TIMEOUT_S IDENTIFIER ELECTION_PATH EPOCH_PATH [BEACON_PORT BEACON_PATH]
Prints ``ELECTED <epoch>`` and ``REVOKED <reason>`` lines (flushed) and runs until killed. With a beacon port,
it publishes a LeaderBeacon on 127.0.0.1:BEACON_PORT while it leads.
"""

import sys
import threading

from election import LeaderBeacon, LeaderElection, make_client


def main() -> None:
    hosts, timeout_s, identifier, path, epoch_path = sys.argv[1:6]
    client = make_client(hosts, float(timeout_s), identifier)
    beacon = LeaderBeacon(client, identifier, ("127.0.0.1", int(sys.argv[6])), sys.argv[7]).start() \
        if len(sys.argv) > 7 else None

    def elected(epoch: int) -> None:
        if beacon is not None:
            beacon.publish(election.lock_node)
        print(f"ELECTED {epoch}", flush=True)

    election = LeaderElection(client, identifier, path, epoch_path, on_elected=elected,
                              on_revoked=lambda reason: print(f"REVOKED {reason}", flush=True))
    election.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
