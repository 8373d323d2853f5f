/**
 * Runs `metagrid start` as a child process and waits for its ready line. Used
 * by `metagrid devnet`, by the end-to-end tests and by the benchmarks, so all
 * three start daemons exactly the way an operator does.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, type WriteStream } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { ReadyInfo } from './node.ts'

export const BIN_PATH = fileURLToPath(new URL('./bin.ts', import.meta.url))
/**
 * V8 flags every daemon runs with (also in package.json's scripts, the bin's
 * shebang and systemd/metagrid.service): a young generation of 4 MiB per
 * semi-space instead of 16 MiB. An idle daemon allocates little, and V8
 * otherwise lets the nursery grow and keeps it resident: 265 MiB per node of
 * an idle 5-node devnet after 90 s, 166 MiB with this (README, Operations).
 */
export const NODE_FLAGS = ['--max-semi-space-size=4']

export class DaemonExitedError extends Error {
  static override name = 'DaemonExitedError'
  override name = 'DaemonExitedError'
}

export interface SpawnDaemonOptions {
  args: string[]
  env?: NodeJS.ProcessEnv
  /** Append the daemon's stdout and stderr here. */
  logFile?: string
  /** How long to wait for the ready line. */
  readyTimeoutMs?: number
  /** Called with every stdout line parsed as JSON (lines that are not JSON are skipped). */
  onLogLine?: (line: Record<string, unknown>) => void
  /**
   * Run the daemon in its own process group, so a Ctrl-C typed at the terminal
   * reaches only the parent, which then stops the daemon with one SIGTERM
   * (a daemon that got SIGINT from the terminal and then SIGTERM from its
   * parent would take the second signal as a demand to exit at once).
   */
  detached?: boolean
}

/** How many of the last output lines are kept for error messages. */
const TAIL_LINES = 50

export class DaemonProcess {
  readonly child: ChildProcess
  readonly ready: Promise<ReadyInfo>
  readonly exited: Promise<number | null>
  /** The last lines the daemon wrote, stdout and stderr interleaved, for diagnosing a failure. */
  readonly tail: string[] = []
  readonly spawnedAt = performance.now()
  readyAt: number | undefined
  private readonly log: WriteStream | undefined

  constructor (options: SpawnDaemonOptions) {
    this.child = spawn(process.execPath, [...NODE_FLAGS, BIN_PATH, 'start', ...options.args], {
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: options.detached ?? false
    })
    this.log = options.logFile != null ? createWriteStream(options.logFile, { flags: 'a' }) : undefined
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => { resolve(code ?? (signal != null ? 128 : null)) })
    })
    const { promise, resolve, reject } = Promise.withResolvers<ReadyInfo>()
    this.ready = promise
    // Avoid an unhandled rejection when nobody waits for readiness.
    promise.catch(() => {})
    const timer = setTimeout(() => {
      reject(new DaemonExitedError(`daemon not ready after ${options.readyTimeoutMs ?? 30_000} ms; last output:\n${this.tail.join('\n')}`))
    }, options.readyTimeoutMs ?? 30_000)
    void this.exited.then((code) => {
      clearTimeout(timer)
      reject(new DaemonExitedError(`daemon exited with code ${code} before it was ready; last output:\n${this.tail.join('\n')}`))
      this.log?.end()
    })

    const remember = (line: string): void => {
      this.tail.push(line)
      if (this.tail.length > TAIL_LINES) this.tail.shift()
      this.log?.write(`${line}\n`)
    }
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      remember(line)
      let parsed: Record<string, unknown>
      try {
        parsed = JSON.parse(line)
      } catch {
        return
      }
      options.onLogLine?.(parsed)
      if (parsed.msg === 'ready' && this.readyAt == null) {
        this.readyAt = performance.now()
        clearTimeout(timer)
        resolve({ peerId: parsed.peerId as string, api: parsed.api as string, addrs: parsed.addrs as string[], listen: (parsed.listen as string[] | undefined) ?? [] })
      }
    })
    createInterface({ input: this.child.stderr! }).on('line', remember)
  }

  get pid (): number | undefined {
    return this.child.pid
  }

  /** Sends `signal` and waits for exit; SIGKILL after `timeoutMs`. Resolves to the exit code. */
  async stop (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number | null> {
    if (this.child.exitCode != null || this.child.signalCode != null) return this.exited
    this.child.kill(signal)
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
    try {
      return await this.exited
    } finally {
      clearTimeout(timer)
    }
  }
}

/** Daemons this process started and has not seen exit; killed if this process exits first. Process-wide on purpose, like the exit it hooks. */
const running = new Set<DaemonProcess>()
let exitHookInstalled = false

/**
 * Starts a daemon. If this process exits while the daemon still runs (a test
 * runner or bench that crashed or was interrupted), the daemon is killed too,
 * rather than left behind to load the machine.
 */
export function spawnDaemon (options: SpawnDaemonOptions): DaemonProcess {
  const daemon = new DaemonProcess(options)
  running.add(daemon)
  void daemon.exited.then(() => running.delete(daemon))
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.once('exit', () => {
      for (const child of running) child.child.kill('SIGKILL')
    })
  }
  return daemon
}

/** The environment for a child daemon: the parent's, minus METAGRID_* so a stray variable cannot change a devnet or test node. */
export function cleanDaemonEnv (env: NodeJS.ProcessEnv, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith('METAGRID_'))),
    ...extra
  }
}
