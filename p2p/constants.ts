/**
 * Every protocol id and topic name metagrid puts on the wire, in one place.
 * A change of wire format bumps the version in the name, so old and new nodes
 * never misread each other: they simply do not speak.
 */

/** Prefix for the Kademlia DHT; nodes of another libp2p network do not join ours by accident. */
export const DHT_PROTOCOL = '/metagrid/kad/1.0.0'

/** Anti-entropy for shard state over a direct stream. */
export const SYNC_PROTOCOL = '/metagrid/sync/2.0.0'

/** Signed load reports. */
export const TELEMETRY_TOPIC = '/metagrid/telemetry/1'

/** Membership claims (alive, suspect, dead, with the subject's incarnation), signed by their origin. */
export const MEMBERS_TOPIC = '/metagrid/members/1'

/** CRDT deltas for one shard (or shard group). */
export function shardTopic (shardId: string): string {
  return `/metagrid/shard/${shardId}/2`
}

/** libp2p's user agent for this software, seen by peers through identify. */
export const AGENT_NAME = 'metagrid'

/** Indirect probes: "ping this peer for me" (SWIM's ping-req). */
export const PROBE_PROTOCOL = '/metagrid/probe/1.0.0'

/**
 * Latency probes run libp2p's ping under metagrid's own protocol id
 * (`/metagrid/ping/1.0.0`). The ping spec allows one outbound stream per peer,
 * and kad-dht pings peers on `/ipfs/ping/1.0.0` to admit or keep them in its
 * routing table: sharing that stream made kad-dht drop healthy peers whenever
 * a probe was in flight.
 */
export const PROBE_PING_PREFIX = 'metagrid'

/** Lease votes and shard handoffs between placement peers. */
export const LEASE_PROTOCOL = '/metagrid/lease/3.0.0'

/** A lease holder's keepalives to its voters: one long-lived stream per voter, whatever the number of shards. */
export const KEEPALIVE_PROTOCOL = '/metagrid/keepalive/1.0.0'

/** A host's writes to its voters, answered once durable there (the majority write concern). */
export const REPLICATE_PROTOCOL = '/metagrid/replicate/2.0.0'

/** The system shard every node replicates: signed descriptors of placement candidates and the lease table. */
export const PLACEMENT_SHARD = 'sys.placement'

/** Two-phase entity transfers across shard borders. */
export const HANDOFF_PROTOCOL = '/metagrid/handoff/1.0.0'

/** A world client's input, carried by the node its session is on to the host of the input's shard. */
export const INPUT_PROTOCOL = '/metagrid/input/2.0.0'

/** The system shard every node replicates: the provenance records of every asset (append-only). */
export const PROVENANCE_SHARD = 'sys.provenance'

/** The system shard every node replicates: every token revocation (append-only), enforced by every node. */
export const REVOCATIONS_SHARD = 'sys.revocations'

/**
 * The provenance ledger's registrar: a system shard placement elects a host
 * for; that host witnesses each asset's first registration (a signed receipt
 * with its epoch and sequence number), so a later claim never takes an asset.
 */
export const LEDGER_SHARD = 'sys.ledger'

/** Registrations at the ledger's host. */
export const LEDGER_PROTOCOL = '/metagrid/ledger/1.0.0'
