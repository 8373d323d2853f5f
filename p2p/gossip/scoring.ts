/**
 * gossipsub peer scoring for metagrid's topics. The parts that matter:
 *
 * - Invalid messages (P4) cost dearly and are remembered: each Reject from our
 *   validators squares into the score, so two invalid reports push a peer
 *   below the gossip threshold and a third below the graylist, where
 *   everything it sends is dropped; it is pruned from the mesh at the next
 *   heartbeat once its score is negative.
 * - Mesh delivery penalties (P3, P3b) are off: telemetry is a low-rate topic
 *   by design, and counting a peer short for not relaying 20 messages a window
 *   would punish every honest peer.
 * - IP colocation (P6) spares loopback: a devnet or a testbed runs many nodes
 *   behind 127.0.0.1, and they are the operator's own.
 */
import { createPeerScoreParams, createTopicScoreParams, type PeerScoreParams, type TopicScoreParams } from '@libp2p/gossipsub/score'
import { TELEMETRY_TOPIC } from '../constants.ts'

/** Score parameters for a low-rate topic whose messages are all validated. */
export function validatedTopicScore (overrides: Partial<TopicScoreParams> = {}): TopicScoreParams {
  return createTopicScoreParams({
    topicWeight: 1,
    timeInMeshWeight: 0.01,
    timeInMeshQuantum: 1_000,
    timeInMeshCap: 300,
    firstMessageDeliveriesWeight: 1,
    firstMessageDeliveriesDecay: 0.9,
    firstMessageDeliveriesCap: 10,
    meshMessageDeliveriesWeight: 0,
    meshFailurePenaltyWeight: 0,
    // One invalid message: -10. Two: -40, below the gossip threshold. Three: -90, graylisted.
    invalidMessageDeliveriesWeight: -10,
    // Per second: the count halves in about 7 s, so a burst of garbage is remembered for a minute or so.
    invalidMessageDeliveriesDecay: 0.9,
    ...overrides
  })
}

export function metagridScoreParams (): Partial<PeerScoreParams> {
  return createPeerScoreParams({
    topics: { [TELEMETRY_TOPIC]: validatedTopicScore() },
    // Positive contributions are capped so a long-lived peer cannot bank enough to hide misbehaviour.
    topicScoreCap: 10,
    IPColocationFactorWhitelist: new Set(['127.0.0.1', '::1'])
  })
}
