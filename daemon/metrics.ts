/**
 * Every metagrid metric, declared once with its type, help text and labels.
 * Parts of the daemon take `metrics: Metrics | null` and never create metrics
 * of their own. Label values are bounded codes (route templates, error codes,
 * reasons), never peer ids, shard ids or free text.
 *
 * libp2p's own metrics (`libp2p_*`) and Node's process metrics (`process_*`,
 * `nodejs_*`: heap, event-loop lag, GC) are registered in the same registry.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { P2pMetrics } from '../p2p/metrics.ts'

export type ScrapeHook = () => void

export class Metrics implements P2pMetrics {
  readonly registry: Registry
  private readonly scrapeHooks: ScrapeHook[] = []

  /** 1, labelled with the software version, so dashboards can show what runs where. */
  readonly buildInfo: Gauge<'version' | 'node'>
  readonly apiRequestDuration: Histogram<'method' | 'route' | 'status'>
  /** HTTP requests refused with a 4xx or failed with a 5xx, by error code. */
  readonly apiErrors: Counter<'code'>
  readonly peersConnected: Gauge
  readonly uptimeSeconds: Gauge
  /** Gossip messages by topic kind and validation result (accept, ignore, reject). */
  readonly gossipMessages: Counter<'topic' | 'result'>
  /** Gossip messages refused, by topic kind, reason code and action. */
  readonly gossipInvalid: Counter<'topic' | 'reason' | 'action'>
  /** Messages on direct streams (probe, sync) refused as malformed or abusive, by protocol and reason. */
  readonly wireRejected: Counter<'protocol' | 'reason'>
  /** Remote changes refused by the admission layer (who may change what), by the path that brought them, reason and action. */
  readonly admissionRejected: Counter<'path' | 'reason' | 'action'>
  readonly telemetryPublished: Counter
  readonly probeRtt: Histogram
  readonly probeFailures: Counter<'kind'>
  readonly members: Gauge<'state'>
  readonly memberTransitions: Counter<'to'>
  readonly memberClaims: Counter<'kind'>
  readonly localHealth: Gauge
  readonly bootstrapDials: Counter<'result'>
  /** Capability descriptors refused (DHT validator or discovery), by reason. */
  readonly catalogRejected: Counter<'reason'>
  readonly catalogPublished: Counter<'result'>
  readonly discoveryDuration: Histogram<'stage'>
  /** This node's own Vivaldi error estimate (0 certain, 1.5 knows nothing). */
  readonly coordinateError: Gauge
  /** Time from a write's HLC wall time at its origin to its apply on this replica. */
  readonly crdtConvergence: Histogram
  readonly crdtConflicts: Counter
  /** Operations one side had and the other lacked at the last anti-entropy session, per shard. */
  readonly crdtDivergence: Gauge<'shard'>
  readonly crdtDeltaBytes: Counter<'direction' | 'path'>
  readonly crdtWrites: Counter<'kind'>
  readonly crdtSyncSessions: Counter<'role' | 'result'>
  readonly crdtLogCut: Counter
  readonly crdtGossipSkipped: Counter<'reason'>
  /** Lease claims and renewals this node ran, by kind and result. */
  readonly placementClaims: Counter<'kind' | 'result'>
  /** Shards whose host changed with this node as the new host: planned handoff or failover. */
  readonly placementMoves: Counter<'reason'>
  readonly placementLeasesHeld: Gauge
  /** Highest lease epoch among the shards this node holds (fencing token). */
  readonly placementEpochMax: Gauge
  readonly placementCompute: Histogram
  /** Shards placed beyond the load bound because every eligible node was full. */
  readonly placementOverflow: Gauge
  /** Shards with no valid lease in this node's table. */
  readonly placementUnheld: Gauge
  /** Entity handoffs across shard borders, by result. */
  readonly entityHandoffs: Counter<'result'>
  readonly keepaliveFailures: Counter<'reason'>
  readonly writeConcern: Histogram<'result'>
  readonly sloSli: Gauge<'objective'>
  readonly sloBudgetRemaining: Gauge<'objective'>
  readonly sloBurnRate: Gauge<'objective'>
  readonly breakerOpen: Gauge<'breaker'>
  /** Requests refused because a breaker shed them, by what was shed. */
  readonly shed: Counter<'what'>
  /** World sessions open on this node. */
  readonly sessions: Gauge
  /** World session frames, by direction (in, out) and type. */
  readonly sessionFrames: Counter<'direction' | 'type'>
  readonly sessionBytes: Counter<'direction'>
  /** Sessions closed or frames refused for a bad frame, a refused token, a slow reader, by bounded reason. */
  readonly sessionRejected: Counter<'reason'>
  /** Bytes queued for world sessions and not yet taken by the kernel, summed over this node's sessions (sampled each tick). */
  readonly sessionBufferedBytes: Gauge
  /** Ticks not sent to a reader that was behind (their changes coalesced and sent once it caught up). */
  readonly sessionHeldTicks: Counter
  /** Session inputs by outcome (applied, duplicate, refused code). */
  readonly sessionInputs: Counter<'result'>
  readonly sessionTickCommits: Counter
  readonly sessionInputSeconds: Histogram

  constructor (registry: Registry = new Registry()) {
    this.registry = registry
    const registers = [registry]
    collectDefaultMetrics({ register: registry })
    this.buildInfo = new Gauge({ name: 'metagrid_build_info', help: 'Software build of this node (always 1)', labelNames: ['version', 'node'], registers })
    this.apiRequestDuration = new Histogram({
      name: 'metagrid_api_request_duration_seconds',
      help: 'HTTP API request latency by route template and status code',
      labelNames: ['method', 'route', 'status'],
      // Loopback API calls take well under a millisecond; discovery queries that go to the DHT take seconds.
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers
    })
    this.apiErrors = new Counter({ name: 'metagrid_api_errors_total', help: 'HTTP API requests answered with an error, by error code', labelNames: ['code'], registers })
    this.peersConnected = new Gauge({ name: 'metagrid_peers_connected', help: 'Peers with at least one open connection', registers })
    this.uptimeSeconds = new Gauge({ name: 'metagrid_uptime_seconds', help: 'Seconds since the node started', registers })
    this.gossipMessages = new Counter({ name: 'metagrid_gossip_messages_total', help: 'Gossip messages validated, by topic kind and result', labelNames: ['topic', 'result'], registers })
    this.gossipInvalid = new Counter({ name: 'metagrid_gossip_invalid_total', help: 'Gossip messages refused, by topic kind, reason and action', labelNames: ['topic', 'reason', 'action'], registers })
    this.wireRejected = new Counter({ name: 'metagrid_wire_rejected_total', help: 'Direct-stream messages refused, by protocol and reason', labelNames: ['protocol', 'reason'], registers })
    this.admissionRejected = new Counter({ name: 'metagrid_admission_rejected_total', help: 'Remote changes refused by the admission layer, by path (gossip, sync, handoff, lease), reason and action', labelNames: ['path', 'reason', 'action'], registers })
    this.telemetryPublished = new Counter({ name: 'metagrid_telemetry_reports_published_total', help: 'Load reports this node published', registers })
    this.probeRtt = new Histogram({
      name: 'metagrid_probe_rtt_seconds',
      help: 'Round-trip time of direct latency probes',
      // From a LAN (sub-millisecond) to the far side of the planet (300 ms) and a congested link beyond.
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2],
      registers
    })
    this.probeFailures = new Counter({ name: 'metagrid_probe_failures_total', help: 'Failed probes, direct or indirect', labelNames: ['kind'], registers })
    this.members = new Gauge({ name: 'metagrid_members', help: 'Members of the mesh as this node sees them, by state', labelNames: ['state'], registers })
    this.memberTransitions = new Counter({ name: 'metagrid_member_transitions_total', help: 'Membership state changes, by new state', labelNames: ['to'], registers })
    this.memberClaims = new Counter({ name: 'metagrid_member_claims_total', help: 'Membership claims this node broadcast (alive: its announcements and refutations), by kind', labelNames: ['kind'], registers })
    this.localHealth = new Gauge({ name: 'metagrid_local_health', help: "Lifeguard's local health score: 0 healthy; probe timeouts stretch by it + 1", registers })
    this.catalogRejected = new Counter({ name: 'metagrid_catalog_rejected_total', help: 'Capability descriptors refused, by reason', labelNames: ['reason'], registers })
    this.catalogPublished = new Counter({ name: 'metagrid_catalog_published_total', help: 'Descriptor publications (DHT put and provide), by result', labelNames: ['result'], registers })
    this.discoveryDuration = new Histogram({
      name: 'metagrid_discovery_duration_seconds',
      help: 'Time to the first and to the complete answer of a discovery',
      labelNames: ['stage'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers
    })
    this.bootstrapDials = new Counter({ name: 'metagrid_bootstrap_dials_total', help: 'Dials to bootstrap peers, by result', labelNames: ['result'], registers })
    this.coordinateError = new Gauge({ name: 'metagrid_coordinate_error', help: 'This node\'s Vivaldi coordinate error estimate', registers })
    this.crdtConvergence = new Histogram({
      name: 'metagrid_crdt_convergence_seconds',
      help: 'Time from a remote write (its HLC wall time at the origin) to its apply here',
      // Fine below 100 ms, where a healthy mesh lives; coarse above, where partitions and restarts land.
      buckets: [0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers
    })
    this.crdtConflicts = new Counter({ name: 'metagrid_crdt_conflicts_total', help: 'Remote writes that raced a concurrent write to the same component (resolved last-writer-wins)', registers })
    this.crdtDivergence = new Gauge({ name: 'metagrid_crdt_divergence_operations', help: 'Operations one replica had and the other lacked at the last anti-entropy session, per shard', labelNames: ['shard'], registers })
    this.crdtDeltaBytes = new Counter({ name: 'metagrid_crdt_delta_bytes_total', help: 'Bytes of CRDT patches, by direction and path (gossip or sync)', labelNames: ['direction', 'path'], registers })
    this.crdtWrites = new Counter({ name: 'metagrid_crdt_writes_total', help: 'Writes acknowledged through the API, by kind', labelNames: ['kind'], registers })
    this.crdtSyncSessions = new Counter({ name: 'metagrid_crdt_sync_sessions_total', help: 'Anti-entropy sessions, by role and result', labelNames: ['role', 'result'], registers })
    this.crdtLogCut = new Counter({ name: 'metagrid_crdt_log_records_cut_total', help: 'Corrupt or truncated shard log records cut on open', registers })
    this.crdtGossipSkipped = new Counter({ name: 'metagrid_crdt_gossip_skipped_total', help: 'Deltas not gossiped (left to anti-entropy), by reason', labelNames: ['reason'], registers })
    this.placementClaims = new Counter({ name: 'metagrid_placement_claims_total', help: 'Lease claims and renewals run by this node, by kind (claim, renew, orphan_release) and result', labelNames: ['kind', 'result'], registers })
    this.placementMoves = new Counter({ name: 'metagrid_placement_moves_total', help: 'Shards this node took over, by reason (handoff, failover)', labelNames: ['reason'], registers })
    this.placementLeasesHeld = new Gauge({ name: 'metagrid_placement_leases_held', help: 'Shards whose lease this node holds', registers })
    this.placementEpochMax = new Gauge({ name: 'metagrid_placement_lease_epoch_max', help: 'Highest lease epoch (fencing token) among shards this node holds', registers })
    this.placementCompute = new Histogram({ name: 'metagrid_placement_compute_seconds', help: 'Time to compute the assignment of every shard', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers })
    this.placementOverflow = new Gauge({ name: 'metagrid_placement_overflow_shards', help: 'Shards placed beyond the load bound because every eligible node was full', registers })
    this.placementUnheld = new Gauge({ name: 'metagrid_placement_unheld_shards', help: 'Shards with no valid lease in this node\'s table', registers })
    this.entityHandoffs = new Counter({ name: 'metagrid_entity_handoffs_total', help: 'Entity transfers across shard borders, by result (committed, aborted, resolved)', labelNames: ['result'], registers })
    this.keepaliveFailures = new Counter({ name: 'metagrid_keepalive_failures_total', help: 'Lease keepalive streams to voters that could not be opened or broke, by reason (dial, stream)', labelNames: ['reason'], registers })
    this.writeConcern = new Histogram({ name: 'metagrid_write_concern_seconds', help: 'Time from a write being durable here to a majority of its voters holding it, by result (ok, timeout, fenced)', labelNames: ['result'], buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], registers })
    this.sloSli = new Gauge({ name: 'metagrid_slo_sli', help: 'Service level indicator over the SLO window: good events / all events', labelNames: ['objective'], registers })
    this.sloBudgetRemaining = new Gauge({ name: 'metagrid_slo_error_budget_remaining', help: 'Fraction of the error budget left over the SLO window (1 untouched, 0 spent, below 0 overspent)', labelNames: ['objective'], registers })
    this.sloBurnRate = new Gauge({ name: 'metagrid_slo_burn_rate', help: 'Error budget burn rate over the burn window (1: the budget lasts exactly the window)', labelNames: ['objective'], registers })
    this.breakerOpen = new Gauge({ name: 'metagrid_breaker_open', help: '1 while a circuit breaker sheds work', labelNames: ['breaker'], registers })
    this.shed = new Counter({ name: 'metagrid_shed_total', help: 'Requests refused by an open breaker, by what was shed', labelNames: ['what'], registers })
    this.sessions = new Gauge({ name: 'metagrid_sessions', help: 'World sessions (WebSocket) open on this node', registers })
    this.sessionFrames = new Counter({ name: 'metagrid_session_frames_total', help: 'World session frames, by direction (in, out) and type', labelNames: ['direction', 'type'], registers })
    this.sessionBytes = new Counter({ name: 'metagrid_session_bytes_total', help: 'World session frame bytes, by direction (in, out)', labelNames: ['direction'], registers })
    this.sessionBufferedBytes = new Gauge({ name: 'metagrid_session_buffered_bytes', help: 'Bytes queued for world sessions and not yet taken by the kernel, summed over this node\'s sessions (sampled each tick; a session more than 1 MiB behind is closed)', registers })
    this.sessionHeldTicks = new Counter({ name: 'metagrid_session_held_ticks_total', help: 'Ticks held back from a reader with more than 256 KiB queued; their changes are coalesced per entity and sent once it is under 64 KiB', registers })
    this.sessionRejected = new Counter({ name: 'metagrid_session_rejected_total', help: 'World session frames refused or sessions closed by this node, by reason', labelNames: ['reason'], registers })
    this.sessionInputs = new Counter({ name: 'metagrid_session_inputs_total', help: 'World session inputs by outcome (applied, duplicate, or the refusal code)', labelNames: ['result'], registers })
    this.sessionTickCommits = new Counter({ name: 'metagrid_session_tick_commits_total', help: 'Shard commits made on a layer tick, each holding every input the shard took here since the last one', registers })
    this.sessionInputSeconds = new Histogram({ name: 'metagrid_session_input_seconds', help: 'Time from an input arriving to its acknowledgement (applied or duplicate)', buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], registers })
  }

  /** Registers a function that refreshes point-in-time gauges just before each scrape. */
  onScrape (hook: ScrapeHook): void {
    this.scrapeHooks.push(hook)
  }

  async render (): Promise<{ contentType: string, body: string }> {
    for (const hook of this.scrapeHooks) hook()
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
