/**
 * Real daemon processes for end-to-end tests, started through the CLI exactly
 * as an operator would, each in its own temporary data directory.
 */
import { execFile } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { BIN_PATH, cleanDaemonEnv, spawnDaemon, type DaemonProcess } from '../../daemon/process.ts'
import type { ReadyInfo } from '../../daemon/node.ts'

export interface TestDaemon extends ReadyInfo {
  process: DaemonProcess
  dataDir: string
}

export async function makeTempDir (prefix = 'metagrid-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix))
}

/** Tracks what a test started so one `cleanup()` in afterAll/afterEach stops and removes it all. */
export class TestBed {
  private readonly daemons: DaemonProcess[] = []
  private readonly dirs: string[] = []

  async tempDir (): Promise<string> {
    const dir = await makeTempDir()
    this.dirs.push(dir)
    return dir
  }

  /** Starts `metagrid start` on loopback with an ephemeral P2P port and API port. */
  async start (options: { dataDir?: string, args?: string[], env?: NodeJS.ProcessEnv } = {}): Promise<TestDaemon> {
    const dataDir = options.dataDir ?? await this.tempDir()
    // For looking into a failed run: METAGRID_TESTBED_LOG_LEVEL=debug METAGRID_TESTBED_KEEP_LOGS=DIR keeps each daemon's output there.
    const keep = process.env.METAGRID_TESTBED_KEEP_LOGS
    const level = process.env.METAGRID_TESTBED_LOG_LEVEL
    const daemon = spawnDaemon({
      args: ['--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json', ...(level != null && level !== '' ? ['--log-level', level] : []), ...(options.args ?? [])],
      env: cleanDaemonEnv(process.env, options.env)
    })
    const index = this.daemons.push(daemon)
    if (keep != null && keep !== '') {
      await mkdir(keep, { recursive: true })
      const out = createWriteStream(join(keep, `${Date.now()}-${index}.log`))
      daemon.child.stdout?.pipe(out)
      daemon.child.stderr?.pipe(out)
    }
    const ready = await daemon.ready
    return { ...ready, process: daemon, dataDir }
  }

  async cleanup (): Promise<void> {
    await Promise.all(this.daemons.map((daemon) => daemon.stop('SIGKILL')))
    await Promise.all(this.dirs.map((dir) => rm(dir, { recursive: true, force: true })))
  }
}

export async function getJson<T = any> (api: string, path: string): Promise<T> {
  const response = await fetch(`${api}${path}`, { signal: AbortSignal.timeout(30_000) })
  const body = await response.json()
  if (!response.ok) throw new Error(`${path}: ${response.status} ${JSON.stringify(body)}`)
  return body as T
}

/** Polls `check` until it returns a value that is not undefined/false, or fails with the last error. */
export async function waitFor<T> (what: string, check: () => Promise<T> | T, timeoutMs = 30_000, intervalMs = 250): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>
    } catch (err) {
      lastError = err
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError != null ? `: ${(lastError as Error).message}` : ''}`)
}

export interface CliRun { code: number, stdout: string, stderr: string }

/** Runs `metagrid ARGS` as a real process with a clean environment (plus `env`); never throws on a non-zero exit. */
export async function runCli (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return promisify(execFile)(process.execPath, [BIN_PATH, ...args], { env: cleanDaemonEnv(process.env, env), timeout: 60_000 })
    .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }))
    .catch((err: { code: number, stdout: string, stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }))
}

/** A TCP port on loopback that was free a moment ago. */
export async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}
