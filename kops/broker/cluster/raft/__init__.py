"""KRaft-style controller quorum. ``core`` is sans-io: events in, actions out.

Modules: ``messages`` (Vote, BeginQuorumEpoch, EndQuorumEpoch, Fetch,
FetchSnapshot dataclasses with Kafka's field names), ``log`` (``MemoryLog``:
entries with offset/epoch/payload plus an epoch index and a snapshot prefix),
``state`` (``Role``, ``RaftConfig``, ``QuorumStateData``), ``actions``,
``core`` (``RaftNode``), ``records`` (entries as Kafka record batches) and
``wire`` (the messages as kio's KRaft schemas). Two modules do IO, both only
to files: ``quorum_state`` (epoch and vote) and ``store`` (``RaftStore``: the
metadata log as segments plus snapshots, performing the core's storage
actions). The asyncio driver that puts this on the network is
``kops.broker.cluster.quorum``.

Events (each returns ``list[Action]``; ``now_ms`` is the caller's clock):
``start(now)``, ``tick(now)`` (call again at ``next_deadline_ms()``),
``handle(src, message, now)``, ``propose(payload, now)`` (leader only; returns a
``Proposal`` with the offset and the actions, raises ``NotLeaderError``),
``log_flushed(end_offset, now)``, ``snapshot(end_offset, state, now)`` and
``resign(now)`` (graceful: EndQuorumEpoch to the voters, best successor first).
Randomness (election jitter, correlation ids, observer probing) comes only from
the ``random.Random`` passed in.

Actions, to perform in list order: ``PersistQuorumState`` (write it durably,
e.g. ``FileQuorumStateStore.write``, before any later action: that is what makes
a vote binding across a crash), ``AppendEntries`` (may be buffered; report with
``log_flushed`` — a follower only sends its next Fetch, which acknowledges the
data, and a leader only counts its own entries, once flushed), ``TruncateLog``,
``PersistSnapshot`` / ``InstallSnapshot`` (durable before later actions; after a
truncation never report a flush above the truncation point for writes issued
before it), ``Send(dest, message)``, ``ApplyEntries`` (committed entries, in
order; control entries are LeaderChange records to skip) and ``RoleChanged``.

Protocol: epochs are terms. A candidate bumps the epoch, votes for itself
(persisted) and asks for votes carrying (last epoch, log end offset); a voter
grants once per epoch and only to a log at least as fresh. The winner persists,
appends a LeaderChange entry and sends BeginQuorumEpoch. Replication is pulled:
followers send Fetch(fetch_offset, last_fetched_epoch), the leader long-polls
up to ``fetch_max_wait_ms`` and answers records, a diverging epoch (the follower
truncates and retries) or a snapshot id (the follower sends FetchSnapshot). The
high watermark is the offset a majority of voters has flushed, advanced only
once it covers an entry of the leader's own epoch. A follower that has not
heard from its leader for ``fetch_timeout_ms`` stands for election; a leader
without fetches from a majority for ``fetch_timeout_ms`` resigns (check-quorum).
Observers (non-voters) fetch and learn the leader from error hints but never
vote or stand. Timeouts: election 500 ms + random(0, 500), fetch 1000 ms (a
one-host default, half Kafka's), all in ``RaftConfig``.
"""
