/**
 * The daemon's configuration, as one zod schema. Every key can come from the
 * config file, from a `METAGRID_*` environment variable and (for the top-level
 * keys listed in `daemon/config/flags.ts`) from a command-line flag.
 *
 * Every default that is not obvious says why it has its value.
 */
import { homedir } from 'node:os'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'

const isMultiaddr = (value: string): boolean => {
  try {
    multiaddr(value)
    return value.startsWith('/')
  } catch {
    return false
  }
}

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

/** ISO 3166-1 alpha-2 country code with an optional ISO 3166-2 subdivision: `DE`, `DE-BY`, `US-CA`. */
export const regionCode = z.string().regex(/^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$/, {
  error: 'expected an ISO 3166 region code such as DE or US-CA'
})

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
  inboundConnectionThreshold: z.int().min(1).max(10_000).default(10)
})

export const configSchema = z.strictObject({
  dataDir: z.string().min(1),
  listen: z.array(multiaddrString).min(1, { error: 'expected at least one listen multiaddr' }),
  announce: z.array(multiaddrString),
  api: hostPort,
  bootstrap: z.array(bootstrapAddr),
  region: regionCode.optional(),
  logLevel: z.enum(logLevels),
  /** `auto` writes JSON unless stdout is a terminal, so pipes, journald and scripts always get JSON. */
  logFormat: z.enum(['auto', 'json', 'pretty']),
  connections: connectionsSchema.prefault({})
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
