/**
 * The metrics p2p/ updates, as an interface: daemon/metrics.ts declares them
 * all in one place and its `Metrics` implements this, so p2p/ never imports
 * the daemon. Label values are bounded codes, never peer, entity or free
 * text (an unknown code from a peer is mapped to a known one first).
 */
import type { Counter, Gauge, Histogram } from 'prom-client'

export interface P2pMetrics {
  gossipMessages: Counter<'topic' | 'result'>
  gossipInvalid: Counter<'topic' | 'reason' | 'action'>
  wireRejected: Counter<'protocol' | 'reason'>
  admissionRejected: Counter<'path' | 'reason' | 'action'>
  telemetryPublished: Counter
  probeRtt: Histogram
  probeFailures: Counter<'kind'>
  members: Gauge<'state'>
  memberTransitions: Counter<'to'>
  memberClaims: Counter<'kind'>
  localHealth: Gauge
  bootstrapDials: Counter<'result'>
  catalogRejected: Counter<'reason'>
  catalogPublished: Counter<'result'>
  discoveryDuration: Histogram<'stage'>
  coordinateError: Gauge
  crdtConvergence: Histogram
  crdtConflicts: Counter
  crdtDivergence: Gauge<'shard'>
  crdtDeltaBytes: Counter<'direction' | 'path'>
  crdtSyncSessions: Counter<'role' | 'result'>
  crdtLogCut: Counter
  crdtGossipSkipped: Counter<'reason'>
  placementClaims: Counter<'kind' | 'result'>
  placementMoves: Counter<'reason'>
  placementLeasesHeld: Gauge
  placementEpochMax: Gauge
  placementCompute: Histogram
  placementOverflow: Gauge
  placementUnheld: Gauge
  entityHandoffs: Counter<'result'>
  keepaliveFailures: Counter<'reason'>
  writeConcern: Histogram<'result'>
}
