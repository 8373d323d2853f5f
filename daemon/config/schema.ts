/**
 * The daemon's configuration, as one zod schema. Every key can come from the
 * config file, from a `METAGRID_*` environment variable and (for the top-level
 * keys listed in `daemon/config/flags.ts`) from a command-line flag.
 *
 * Every default that is not obvious says why it has its value.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'
import { z } from 'zod'
import { worldSchema } from '../../p2p/placement/world.ts'
import { isMultiaddr, regionCode } from '../../p2p/catalog/descriptor.ts'
import { catalogSchema } from '../../p2p/catalog/config.ts'

const multiaddrString = z.string().refine(isMultiaddr, {
  error: 'expected a multiaddr such as /ip4/0.0.0.0/tcp/4001'
})

/** A bootstrap address must name the peer it dials, or the dial cannot be authenticated. */
const bootstrapAddr = z.string().refine(
  (value) => isMultiaddr(value) && /\/p2p\/[1-9A-HJ-NP-Za-km-z]+$/.test(value),
  { error: 'expected a multiaddr ending in /p2p/<peer id>, such as /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...' }
)

const hostPortPattern = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/

export const hostPort = z.string().refine(
  (value) => {
    const match = hostPortPattern.exec(value)
    return match != null && Number(match[1]) <= 65535
  },
  { error: 'expected HOST:PORT such as 127.0.0.1:7311 (port 0 picks a free port)' }
)

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

const connectionsSchema = z.strictObject({
  /** Edge machines are small; 200 connections keep the DHT and gossip meshes healthy without exhausting file descriptors. */
  maxConnections: z.int().min(1).max(100_000).default(200),
  /** Bounds half-open inbound handshakes, the cheapest way to exhaust a node. */
  maxIncomingPendingConnections: z.int().min(1).max(10_000).default(16),
  /** How many dials may run at once. */
  maxParallelDials: z.int().min(1).max(1_000).default(50),
  /** A dial that has not completed in 10 s is to a peer too far or too busy to be useful for real-time work. */
  dialTimeoutMs: z.int().min(100).max(120_000).default(10_000),
  /** Inbound connection attempts per second from one host before further ones are refused. */
  inboundConnectionThreshold: z.int().min(1).max(10_000).default(10),
  /**
   * Ranges exempt from the inbound limits above. Loopback by default: a devnet, a testbed or a
   * local relay puts many peers behind 127.0.0.1, and they are the operator's own.
   */
  allow: z.array(z.string().refine((value) => isMultiaddr(value) && /^\/ip[46]\//.test(value), {
    error: 'expected an IP multiaddr or range such as /ip4/10.0.0.0/ipcidr/8'
  })).default(['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128'])
})

const ipAddress = z.union([z.ipv4(), z.ipv6()], { error: 'expected an IPv4 or IPv6 address such as 192.0.2.10' })

const telemetrySchema = z.strictObject({
  /**
   * Five seconds keeps load fresh enough for placement (which moves a shard only after minutes of hysteresis);
   * every report reaches every node, several copies each, so this is the largest share of an idle node's traffic.
   * Liveness does not depend on it (membership probes).
   */
  intervalMs: z.int().min(100).max(600_000).default(5_000),
  /** Reports older than this are ignored rather than applied: a node's load from 30 s ago misleads more than it informs. */
  staleAfterMs: z.int().min(1_000).max(3_600_000).default(30_000),
  /** A report from further in the future than this is ignored: the sender's clock is wrong. */
  maxClockSkewMs: z.int().min(0).max(3_600_000).default(30_000)
})

const probesSchema = z.strictObject({
  /** SWIM's protocol period: one member probed per interval (a libp2p ping whose RTT also feeds the coordinate). */
  intervalMs: z.int().min(50).max(600_000).default(500),
  /** A direct probe unanswered this long failed and indirect probes follow; Lifeguard stretches it on a slow node. Well above a continental RTT. */
  timeoutMs: z.int().min(20).max(60_000).default(300),
  /** Peers asked to probe a member that failed a direct probe before it is suspected (SWIM's k). */
  indirect: z.int().min(0).max(16).default(3)
}).refine((p) => p.timeoutMs < p.intervalMs, { error: 'probes.timeoutMs must be under probes.intervalMs' })

const membershipSchema = z.strictObject({
  /** Lifeguard's α: the shortest suspicion is α · max(1, log10 N) probe intervals (2 s at 10 nodes with the defaults). */
  suspicionMult: z.int().min(1).max(100).default(4),
  /** Lifeguard's β: an unconfirmed suspicion lasts β times the shortest. */
  suspicionMaxMult: z.int().min(1).max(100).default(6),
  /** Lifeguard's S: a slow node stretches its probe interval and timeouts up to S + 1 times. */
  maxHealth: z.int().min(0).max(64).default(8),
  /** Dead members are listed this long, then forgotten. */
  forgetAfterMs: z.int().min(1_000).max(86_400_000).default(600_000)
})

/** Shard ids name gossip topics and database keys: short, and no separators beyond . _ - */
export const shardId = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, { error: 'expected a shard id such as world-3-7 (lowercase letters, digits, . _ -, at most 64)' })

const shardsSchema = z.strictObject({
  /** Shards this node replicates (until placement assigns them). Any other shard id is unknown to the API. */
  served: z.array(shardId).max(4096).default(['default']),
  /** Writes within this window share one LevelDB batch, one delta and one gossip message (group commit). */
  batchMs: z.int().min(0).max(1_000).default(5),
  /** fsync the log on every group commit: survives power loss, not just a crash of the daemon. */
  sync: z.boolean().default(false),
  /** Log records after which the shard's log is folded into its snapshot. */
  compactEveryRecords: z.int().min(10).max(1_000_000).default(2_000),
  /**
   * Anti-entropy with one random replica of each shard this often. It is the backstop: a gossiped batch that shows
   * a gap, a new connection and a peer back from suspect or dead each start a session at once.
   */
  syncIntervalMs: z.int().min(500).max(3_600_000).default(30_000),
  /** A remote write whose clock is further ahead of ours than this is refused. */
  maxClockDriftMs: z.int().min(100).max(86_400_000).default(60_000),
  /** Largest JSON value of one component, in bytes. */
  maxValueBytes: z.int().min(64).max(1_048_576).default(65_536)
})

const placementSchema = z.strictObject({
  /** Run decentralized placement: world shards get a host and replicas, with leases. Off: only `shards.served` is replicated. */
  enabled: z.boolean().default(true),
  world: worldSchema.prefault({}),
  /** A JSON rule file constraining who may host which shards (see the README's placement section). */
  policyFile: z.string().min(1).optional(),
  /** Replicas per shard besides the host. */
  replicas: z.int().min(0).max(15).default(2),
  /** Load bound: no node hosts more than (1 + epsilon) times the mean number of shards. */
  epsilon: z.number().min(0).max(10).default(0.25),
  /** Width of a score bucket; candidates within one are ordered by rendezvous hash. */
  scoreStep: z.number().min(0.001).max(10).default(0.25),
  /** An estimated RTT to a shard's players of this many ms or more scores 0 on closeness. */
  rttScaleMs: z.number().min(1).max(10_000).default(200),
  weights: z.strictObject({
    rtt: z.number().min(0).max(100).default(1),
    headroom: z.number().min(0).max(100).default(0.5),
    reliability: z.number().min(0).max(100).default(0.5),
    cost: z.number().min(0).max(100).default(0.25)
  }).prefault({}),
  /**
   * A lease's term: the holder renews it (one signed vote round per shard) when half is left. Failover does not wait for
   * it: voters grant a silent holder's shards to another after `liveness.timeoutMs`.
   */
  leaseMs: z.int().min(1_000).max(3_600_000).default(300_000),
  liveness: z.strictObject({
    /** A lease holder sends each of its voters a keepalive this often (one stream per voter, whatever the number of shards). */
    intervalMs: z.int().min(10).max(60_000).default(250),
    /** A voter grants a holder's shards to another after this much silence on its own clock: the failover time after a crash. */
    timeoutMs: z.int().min(100).max(600_000).default(1_000)
  }).prefault({}).refine((l) => l.intervalMs * 3 <= l.timeoutMs, { error: 'placement.liveness.intervalMs must be at most a third of placement.liveness.timeoutMs' }),
  /** A write to a layer with the majority write concern that a majority of voters do not hold within this long is answered 503 WRITE_NOT_REPLICATED. */
  writeTimeoutMs: z.int().min(10).max(60_000).default(2_000),
  /** Clock difference tolerated between nodes: a holder stops this long before its lease expires, voters wait this long after. */
  marginMs: z.int().min(0).max(60_000).default(1_000),
  /** How often placement is recomputed and leases are looked after. */
  tickMs: z.int().min(100).max(60_000).default(1_000),
  /** Score gain a planned move must bring (hysteresis). */
  minGain: z.number().min(0).max(100).default(0.2),
  /** A host keeps a shard at least this long before a planned move (hysteresis). */
  minHoldMs: z.int().min(0).max(86_400_000).default(60_000),
  /** After start, shards with no lease are left alone this long so the lease table arrives from peers first. */
  settleMs: z.int().min(0).max(600_000).default(5_000),
  /** Shards whose world area names a home region are placed among that region's nodes (see the README's *Regions*). */
  regions: z.strictObject({
    /** A home region whose nodes' mean CPU load is above this takes help from the nearest regions (1: never for load). */
    maxLoad: z.number().min(0).max(1).default(0.85),
    /** Regions a shard is placed over at most, its home included. */
    maxRegions: z.int().min(1).max(64).default(4)
  }).prefault({})
}).refine((p) => p.marginMs * 3 < p.leaseMs, { error: 'placement.marginMs must be under a third of placement.leaseMs' })

const sessionsSchema = z.strictObject({
  /** World sessions (WebSocket, `/v1/session`) open at once on this node; one more is refused. */
  maxSessions: z.int().min(0).max(100_000).default(1024),
  /** Entities one session sees at most per layer: the nearest ones. */
  maxVisible: z.int().min(1).max(10_000).default(256),
  /** Entities the node tracks for its sessions per layer; past it, new ones are not shown. */
  maxEntities: z.int().min(1).max(10_000_000).default(100_000),
  /** How long an input is retried (host unreachable, a failover, a handoff) before it is refused with `retry`. */
  inputTimeoutMs: z.int().min(100).max(120_000).default(5_000),
  /** Inputs of one session in flight at once; one more is refused with `retry`. */
  maxInputsInFlight: z.int().min(1).max(10_000).default(64)
})

const sloSchema = z.strictObject({
  /** The rolling window SLIs and error budgets are computed over. */
  windowMs: z.int().min(60_000).max(30 * 86_400_000).default(3_600_000),
  /** Events are counted in slots this long; availability is sampled once a slot. */
  slotMs: z.int().min(1_000).max(600_000).default(10_000),
  /** Burn rate is measured over this recent span. */
  burnWindowMs: z.int().min(1_000).max(86_400_000).default(300_000),
  /** API requests answered within this many ms are good. */
  apiLatencyMs: z.number().min(0).max(60_000).default(250),
  apiLatencyTarget: z.number().min(0).max(1).default(0.99),
  /** Remote writes applied within this many ms of their origin are good. */
  convergenceMs: z.number().min(0).max(3_600_000).default(1_000),
  convergenceTarget: z.number().min(0).max(1).default(0.99),
  /** Share of world shards that should have a host with a valid lease. */
  shardAvailabilityTarget: z.number().min(0).max(1).default(0.999),
  /** Decorative work is shed while an objective burns its budget this many times too fast. */
  shedAboveBurnRate: z.number().min(1).max(1_000_000).default(10),
  /** Fewer events than this in the burn window never open the breaker. */
  minEvents: z.int().min(1).max(1_000_000).default(20)
})

const federationSchema = z.strictObject({
  /** Operator keys (peer ids) whose nodes may host and replicate shards. Empty: an open mesh, where any node may. */
  trustedOperators: z.array(z.string().min(1).max(128)).max(1024).default([]),
  /** Code digests (sha256:…) accepted from hosts, as `metagrid attest` prints them. Empty: any. */
  acceptedCodeDigests: z.array(z.string().regex(/^sha256:[0-9a-f]{64}$/, { error: 'expected sha256:<64 hex>' })).max(1024).default([]),
  /** This node's membership certificate from its operator (base64 text, from `metagrid operator certify`). */
  certificateFile: z.string().min(1).optional(),
  /** A libp2p private-network key file (the swarm.key format): only nodes with the same key connect. */
  privateNetworkKeyFile: z.string().min(1).optional()
})

const attestationSchema = z.strictObject({
  /** An attestation lives this long; it is re-issued at half of it. */
  validityMs: z.int().min(10_000).max(30 * 86_400_000).default(86_400_000),
  /** An executable that takes a nonce and prints a hardware quote as JSON { kind, evidence }; none: the node attests as software-only. */
  quoteCommand: z.string().min(1).optional()
})

export const configSchema = z.strictObject({
  dataDir: z.string().min(1),
  listen: z.array(multiaddrString).min(1, { error: 'expected at least one listen multiaddr' }),
  announce: z.array(multiaddrString),
  api: hostPort,
  /**
   * Host names the API answers to beyond IP literals, localhost and the host in `api`. A page
   * reached through DNS rebinding sends its own name as Host, so only names listed here get in.
   */
  apiAllowedHosts: z.array(z.string().regex(/^[A-Za-z0-9.-]{1,253}$/, { error: 'expected a host name such as grid.example.org' })).max(64).default([]),
  bootstrap: z.array(bootstrapAddr),
  region: regionCode.optional(),
  logLevel: z.enum(logLevels),
  /** `auto` writes JSON unless stdout is a terminal, so pipes, journald and scripts always get JSON. */
  logFormat: z.enum(['auto', 'json', 'pretty']),
  connections: connectionsSchema.prefault({}),
  /** Source address for outgoing TCP connections of the same IP family, for multi-homed hosts (the testbed uses it to tell links apart). */
  outboundBindAddress: ipAddress.optional(),
  telemetry: telemetrySchema.prefault({}),
  probes: probesSchema.prefault({}),
  membership: membershipSchema.prefault({}),
  catalog: catalogSchema.prefault({}),
  shards: shardsSchema.prefault({}),
  placement: placementSchema.prefault({}),
  sessions: sessionsSchema.prefault({}),
  slo: sloSchema.prefault({}),
  federation: federationSchema.prefault({}),
  attestation: attestationSchema.prefault({})
})

export type Config = z.infer<typeof configSchema>
export type ConfigInput = z.input<typeof configSchema>

/** Where the daemon keeps its state when nothing says otherwise: systemd's StateDirectory, then the XDG data home. */
export function defaultDataDir (env: NodeJS.ProcessEnv): string {
  const stateDirectory = env.STATE_DIRECTORY?.split(':')[0]
  if (stateDirectory != null && stateDirectory !== '') return stateDirectory
  const xdg = env.XDG_DATA_HOME
  const home = env.HOME != null && env.HOME !== '' ? env.HOME : homedir()
  return join(xdg != null && xdg !== '' ? xdg : join(home, '.local', 'share'), 'metagrid')
}

/** The embedded defaults: `npm start` with no file, env or flags runs a node with these. */
export function defaultConfig (env: NodeJS.ProcessEnv): ConfigInput {
  return {
    dataDir: defaultDataDir(env),
    // Port 0 lets the OS pick a free port so a first start never collides; operators pin a port with --listen.
    listen: ['/ip4/0.0.0.0/tcp/0'],
    announce: [],
    // A fixed loopback port so `metagrid status` finds a default node without flags.
    api: '127.0.0.1:7311',
    bootstrap: [],
    logLevel: 'info',
    logFormat: 'auto'
  }
}
