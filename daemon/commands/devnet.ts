/**
 * `metagrid devnet --nodes N`: N daemons on loopback, each its own process
 * with its own data directory, wired by bootstrapping from the first. Stops
 * them all on Ctrl-C or SIGTERM.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import { releaseSignals } from '../signals.ts'
import { cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../process.ts'
import type { CommandIO } from '../cli/io.ts'
import type { ReadyInfo } from '../node.ts'

/** Past this a laptop runs out of cores before the mesh says anything new. */
const MAX_NODES = 64

/** Each daemon gets this long to stop on SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 7_000

export interface DevnetNode extends ReadyInfo {
  name: string
  dataDir: string
  log: string
}

function parseNodes (value: string | undefined): number {
  const nodes = Number(value)
  if (value == null || !Number.isInteger(nodes) || nodes < 1 || nodes > MAX_NODES) {
    throw new UsageError(`usage error: metagrid devnet: --nodes = ${JSON.stringify(value ?? null)}: expected an integer from 1 to ${MAX_NODES}`)
  }
  return nodes
}

export async function devnetCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('devnet', args, {
    nodes: { type: 'string' },
    'data-dir': { type: 'string' },
    'log-level': { type: 'string' },
    json: { type: 'boolean' }
  })
  const count = parseNodes(stringValue(values.nodes))
  const given = stringValue(values['data-dir'])
  const root = given != null ? resolve(given) : await mkdtemp(join(tmpdir(), 'metagrid-devnet-'))
  const logLevel = stringValue(values['log-level']) ?? 'info'
  const processes: DaemonProcess[] = []
  let stopping = false

  const launch = async (index: number, bootstrap: string[]): Promise<DevnetNode> => {
    const name = `node-${index}`
    const dataDir = join(root, name)
    await mkdir(dataDir, { recursive: true, mode: 0o700 })
    const log = join(dataDir, 'daemon.log')
    const daemon = spawnDaemon({
      args: [
        '--data-dir', dataDir,
        '--listen', '/ip4/127.0.0.1/tcp/0',
        '--api', '127.0.0.1:0',
        '--log-format', 'json',
        '--log-level', logLevel,
        ...bootstrap.flatMap((addr) => ['--bootstrap', addr])
      ],
      env: cleanDaemonEnv(io.env),
      logFile: log,
      detached: true
    })
    processes.push(daemon)
    void daemon.exited.then((code) => {
      if (!stopping) io.stderr.write(`${name} exited unexpectedly with code ${code}; its log is ${log}\n`)
    })
    const ready = await daemon.ready
    return { name, dataDir, log, ...ready }
  }

  const stopAll = async (): Promise<boolean> => {
    stopping = true
    const codes = await Promise.all(processes.map((daemon) => daemon.stop('SIGTERM', STOP_TIMEOUT_MS)))
    return codes.every((code) => code === 0)
  }

  const signalled = new Promise<NodeJS.Signals>((resolveSignal) => {
    process.once('SIGINT', () => resolveSignal('SIGINT'))
    process.once('SIGTERM', () => resolveSignal('SIGTERM'))
    const [early] = releaseSignals()
    if (early != null) resolveSignal(early)
  })

  let nodes: DevnetNode[]
  try {
    const first = await launch(0, [])
    const seed = first.addrs.find((addr) => addr.includes('/127.0.0.1/')) ?? first.addrs[0]
    if (seed == null) throw new Error('node-0 reported no listen address')
    const rest = await Promise.all(Array.from({ length: count - 1 }, (_, i) => launch(i + 1, [seed])))
    nodes = [first, ...rest]
  } catch (err) {
    io.stderr.write(`devnet failed to start: ${(err as Error).message}\n`)
    await stopAll()
    if (given == null) await rm(root, { recursive: true, force: true })
    return ExitCode.FAILURE
  }

  if (values.json === true) {
    io.stdout.write(`${JSON.stringify({ root, nodes })}\n`)
  } else {
    io.stdout.write(`devnet of ${count} node${count > 1 ? 's' : ''} in ${root}${given == null ? ' (removed on exit)' : ''}\n\n`)
    io.stdout.write(renderTable(
      ['node', 'peer id', 'api', 'p2p address'],
      nodes.map((node) => [node.name, node.peerId, node.api, node.addrs[0] ?? '-'])
    ))
    io.stdout.write(`\ntry: npx metagrid status --api ${nodes[0]?.api ?? ''}\nCtrl-C stops every node.\n`)
  }

  const signal = await signalled
  io.stderr.write(`${signal}: stopping ${count} node${count > 1 ? 's' : ''}\n`)
  const clean = await stopAll()
  if (given == null) await rm(root, { recursive: true, force: true })
  return clean ? ExitCode.OK : ExitCode.FAILURE
}
