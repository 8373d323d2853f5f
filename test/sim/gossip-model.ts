/**
 * What gossipsub costs, as a model the simulator can afford at 10,000 nodes:
 * per topic, how many bytes each member sends and receives for each message
 * and per heartbeat, and how long a message takes to reach the members.
 *
 * - Eager push: a member forwards each new message to its mesh peers except
 *   the one it came from: d − 1 copies, with d = min(7, members − 1) (see
 *   GOSSIP_EFFECTIVE_D); the publisher sends d. What is sent is received, so a member receives about
 *   d − 1 copies too (the duplicates IDONTWANT would cut are only skipped
 *   for messages of 512 bytes and more, and ours are smaller).
 * - Lazy gossip: each heartbeat a member sends IHAVE to max(Dlazy, 25% of
 *   its connected non-mesh peers in the topic), listing the ids of the
 *   topic's messages of the last 3 heartbeats. At 25% this grows with the
 *   peers a node is connected to: the gossip factor is a parameter.
 * - Delay: the depth of a random d-regular graph, ⌈log(members) / log(d)⌉
 *   hops, of the mean one-way latency between members plus a millisecond of
 *   processing per hop.
 *
 * The constants are @libp2p/gossipsub's defaults, which the daemon uses.
 * The wire size of a message is the RPC around the payload: the publisher's
 * peer id, sequence number, topic, Ed25519 signature (StrictSign), protobuf
 * tags and lengths, and the yamux and Noise framing.
 */
export const GOSSIP_D = 6
/**
 * Mesh peers a member forwards to, in practice: gossipsub keeps between Dlo
 * (4) and Dhi (12) and accepts GRAFTs up to Dhi, so a member's mesh is D or
 * more. The calibration bench (sim.bench.ts) counted a mean of 6.4 at 10
 * nodes and 7.5 at 30; 7 is taken here, and the calibration compares the
 * model with real gossipsub in the same run.
 */
export const GOSSIP_EFFECTIVE_D = 7
export const GOSSIP_DLAZY = 6
export const GOSSIP_FACTOR = 0.25
export const HISTORY_GOSSIP = 3
export const HEARTBEAT_MS = 1_000
/** An Ed25519 peer id (38 bytes) and a 8-byte sequence number, the default message id of StrictSign. */
export const MESSAGE_ID_BYTES = 46
/** from (2 + 38), seqno (2 + 8), signature (2 + 64), RPC and message tags and lengths (~6), yamux header (12), Noise tag and length (18). */
const RPC_OVERHEAD_BYTES = 152

export function messageWireBytes (payloadBytes: number, topic: string): number {
  return payloadBytes + topic.length + 2 + RPC_OVERHEAD_BYTES
}

export function meshDegree (members: number): number {
  return Math.max(0, Math.min(GOSSIP_D, members - 1))
}

/** Bytes each member sends for one message in a topic of `members` (and, the same, receives). */
export function eagerBytesPerMember (members: number, wireBytes: number): number {
  const d = Math.max(0, Math.min(GOSSIP_EFFECTIVE_D, members - 1))
  return d <= 1 ? wireBytes * d : wireBytes * (d - 1)
}

/**
 * IHAVE bytes each member sends per second in a topic whose members publish
 * `messagesPerS` in all, for a member connected to `members − 1` others in
 * the topic (gossip goes only to connected peers that subscribed).
 */
export function lazyBytesPerMemberPerS (members: number, messagesPerS: number, topic: string, gossipFactor = GOSSIP_FACTOR): number {
  const nonMesh = Math.max(0, members - 1 - meshDegree(members))
  if (nonMesh === 0 || messagesPerS === 0) return 0
  const targets = Math.min(nonMesh, Math.max(GOSSIP_DLAZY, Math.ceil(gossipFactor * nonMesh)))
  const ids = Math.min(5_000, messagesPerS * HISTORY_GOSSIP * HEARTBEAT_MS / 1_000)
  const bytesPerIhave = topic.length + 4 + ids * (MESSAGE_ID_BYTES + 2) + 30
  return targets * bytesPerIhave * (1_000 / HEARTBEAT_MS)
}

/** How long a message takes to reach the members of a topic, ms. */
export function disseminationMs (members: number, meanOneWayMs: number): number {
  const d = Math.max(2, meshDegree(members))
  const hops = members <= 1 ? 0 : Math.max(1, Math.ceil(Math.log(members) / Math.log(d)))
  return hops * (meanOneWayMs + 1)
}
