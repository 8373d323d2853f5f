/**
 * A mesh of real daemon processes on loopback whose links carry emulated
 * one-way delays from a latency matrix (the kernel here has no netem). Each
 * node sits behind a relay (see relay.ts) and dials out from its own loopback
 * address. The testbed cuts and heals links, and kills and restarts nodes;
 * later tests use it for convergence, failover and placement.
 */
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import { latencyMatrix, type City } from './geo.ts'
import { LinkTable } from './links.ts'
import { Relay, sourceAddress } from './relay.ts'

export interface TestbedOptions {
  cities: City[]
  /** Extra `metagrid start` arguments for every node. */
  args?: string[]
  /** Extra environment for every node (METAGRID_* config). */
  env?: NodeJS.ProcessEnv
  /** Per-node extra arguments, by index. */
  nodeArgs?: (index: number) => string[]
  logLevel?: string
}

export interface TestbedNode {
  index: number
  city: City
  dataDir: string
  relay: Relay
  peerId: string
  api: string
  /** The address other nodes dial: the relay's, with the peer id. */
  addr: string
  process: DaemonProcess
}

export class Testbed {
  readonly links: LinkTable
  readonly nodes: TestbedNode[] = []
  readonly root: string
  private readonly relays: Relay[] = []
  private readonly options: TestbedOptions

  private constructor (root: string, options: TestbedOptions) {
    this.root = root
    this.options = options
    this.links = new LinkTable(latencyMatrix(options.cities))
  }

  static async start (options: TestbedOptions): Promise<Testbed> {
    const bed = new Testbed(await mkdtemp(join(tmpdir(), 'metagrid-testbed-')), options)
    try {
      // Relays first, so every node can announce its relay's address from its first start.
      const slots = []
      for (const [index, city] of options.cities.entries()) {
        // Port 0: the relay holds its port from here on; the node's real port is learnt when it is ready.
        const relay = await Relay.listen(index, 0, 0, bed.links)
        bed.relays.push(relay)
        const dataDir = join(bed.root, `node-${index}`)
        await mkdir(dataDir, { recursive: true })
        slots.push({ index, city, dataDir, relay })
      }
      const first = await bed.launch(slots[0]!, [])
      bed.nodes.push(first)
      const rest = await Promise.all(slots.slice(1).map(async (slot) => bed.launch(slot, [first.addr])))
      bed.nodes.push(...rest)
    } catch (err) {
      await bed.stop()
      throw err
    }
    return bed
  }

  private async launch (slot: Omit<TestbedNode, 'peerId' | 'api' | 'addr' | 'process'>, bootstrap: string[]): Promise<TestbedNode> {
    const process_ = spawnDaemon({
      args: [
        '--data-dir', slot.dataDir,
        '--listen', '/ip4/127.0.0.1/tcp/0',
        '--announce', `/ip4/127.0.0.1/tcp/${slot.relay.port}`,
        '--api', '127.0.0.1:0',
        '--log-format', 'json',
        '--log-level', this.options.logLevel ?? process.env.METAGRID_TESTBED_LOG_LEVEL ?? 'warn',
        ...bootstrap.flatMap((addr) => ['--bootstrap', addr]),
        ...(this.options.args ?? []),
        ...(this.options.nodeArgs?.(slot.index) ?? [])
      ],
      env: cleanDaemonEnv(process.env, { METAGRID_OUTBOUND_BIND_ADDRESS: sourceAddress(slot.index), ...this.options.env }),
      logFile: join(slot.dataDir, 'daemon.log')
    })
    const ready = await process_.ready
    const port = Number(/\/tcp\/(\d+)/.exec(ready.listen[0] ?? '')?.[1])
    if (!(port > 0)) throw new Error(`node ${slot.index} reported no listen port: ${JSON.stringify(ready.listen)}`)
    slot.relay.targetPort = port
    return { ...slot, peerId: ready.peerId, api: ready.api, addr: `/ip4/127.0.0.1/tcp/${slot.relay.port}/p2p/${ready.peerId}`, process: process_ }
  }

  /** The emulated round trip between two nodes, ms. */
  rttMs (a: number, b: number): number {
    return this.links.rttMs(a, b)
  }

  /** Kills a node (SIGKILL by default: no goodbye to anyone). */
  async kill (index: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    return this.nodes[index]!.process.stop(signal)
  }

  /** Starts a stopped node again from its data directory, behind the same relay. */
  async restart (index: number): Promise<TestbedNode> {
    const node = this.nodes[index]!
    const others = this.nodes.filter((other) => other.index !== index && other.process.child.exitCode == null && other.process.child.signalCode == null)
    const restarted = await this.launch(node, others.slice(0, 2).map((other) => other.addr))
    this.nodes[index] = restarted
    return restarted
  }

  cut (a: number, b: number): void { this.links.cutLink(a, b) }
  heal (a: number, b: number): void { this.links.healLink(a, b) }
  partition (left: number[], right: number[]): void { this.links.partition(left, right) }
  healAll (): void { this.links.healAll() }

  /** Bytes all relays carried, both directions. */
  bytesRelayed (): number {
    return this.nodes.reduce((sum, node) => sum + node.relay.bytesRelayed(), 0)
  }

  async stop (): Promise<void> {
    await Promise.all(this.nodes.map(async (node) => node.process.stop('SIGTERM', 5_000)))
    await Promise.all(this.relays.map(async (relay) => relay.close()))
    // For looking into a failed run afterwards: METAGRID_TESTBED_KEEP_LOGS=DIR keeps each node's log there.
    const keep = process.env.METAGRID_TESTBED_KEEP_LOGS
    if (keep != null && keep !== '') {
      await mkdir(keep, { recursive: true })
      for (const node of this.nodes) await cp(join(node.dataDir, 'daemon.log'), join(keep, `${Date.now()}-node-${node.index}-${node.peerId.slice(-6)}.log`)).catch(() => {})
    }
    await rm(this.root, { recursive: true, force: true })
  }
}
