/**
 * The command line as an operator meets it: real processes, real exit codes.
 */
import { execFile, spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { BIN_PATH, cleanDaemonEnv } from '../../daemon/process.ts'
import { getJson, runCli, TestBed, waitFor } from '../helpers/daemons.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

const ROOT = new URL('../..', import.meta.url).pathname

interface Run { code: number | null, stdout: string, stderr: string }

async function run (command: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return promisify(execFile)(command, args, { cwd: ROOT, env: cleanDaemonEnv(process.env, env), timeout: 60_000 })
    .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }))
    .catch((err: { code: number, stdout: string, stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }))
}

const metagrid = runCli

describe('metagrid start refuses bad configuration with exit code 2', () => {
  it('names the flag, its value and what was expected', async () => {
    const { code, stdout, stderr } = await metagrid(['start', '--data-dir', await bed.tempDir(), '--api', 'nowhere'])
    expect(code).toBe(2)
    expect(stdout).toBe('')
    expect(stderr).toBe('config error: api = "nowhere" (from flag --api): expected HOST:PORT such as 127.0.0.1:7311 (port 0 picks a free port)\n')
  })

  it('names a bad environment value', async () => {
    const { code, stderr } = await metagrid(['start'], { METAGRID_LOG_LEVEL: 'chatty' })
    expect(code).toBe(2)
    expect(stderr).toMatch(/^config error: logLevel = "chatty" \(from env METAGRID_LOG_LEVEL\): .*expected one of/)
  })

  it('names an unknown key in the config file', async () => {
    const file = join(await bed.tempDir(), 'metagrid.json')
    await writeFile(file, JSON.stringify({ region: 'DE', bootstrapp: [] }))
    const { code, stderr } = await metagrid(['start', '--config', file])
    expect(code).toBe(2)
    expect(stderr.trim().split('\n')).toHaveLength(1)
    expect(stderr).toMatch(/unknown key "bootstrapp" \(from file .*metagrid\.json\)/)
  })

  it('names an unknown flag', async () => {
    const { code, stderr } = await metagrid(['start', '--listn', '/ip4/0.0.0.0/tcp/1'])
    expect(code).toBe(2)
    expect(stderr).toBe("usage error: metagrid start: Unknown option '--listn' (see metagrid help)\n")
  })

  it('names a placement policy file or a federation file it cannot use', async () => {
    const dir = await bed.tempDir()
    const policy = join(dir, 'policy.json')
    await writeFile(policy, JSON.stringify({ version: 1, rules: [{ name: 'eu', allowRegions: ['europe'] }] }))
    const start = ['start', '--data-dir', dir, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0']
    const badPolicy = await metagrid(start, { METAGRID_PLACEMENT_POLICY_FILE: policy })
    expect(badPolicy.code).toBe(2)
    expect(badPolicy.stdout + badPolicy.stderr).toContain(`${policy}: rules.0.allowRegions.0`)
    const missing = await metagrid(start, { METAGRID_FEDERATION_CERTIFICATE_FILE: join(dir, 'no.cert') })
    expect(missing.code).toBe(2)
    expect(missing.stdout + missing.stderr).toContain('cannot read federation.certificateFile')
  })

  it('rejects an unknown command', async () => {
    const { code, stderr } = await metagrid(['launch'])
    expect(code).toBe(2)
    expect(stderr).toMatch(/unknown command "launch"; expected one of: start, devnet, status/)
  })
})

describe('metagrid start refuses an unusable environment', () => {
  it('exits 3 when another daemon holds the data directory', async () => {
    const node = await bed.start()
    const { code, stdout } = await metagrid(['start', '--data-dir', node.dataDir, '--api', '127.0.0.1:0', '--listen', '/ip4/127.0.0.1/tcp/0'])
    expect(code).toBe(3)
    expect(JSON.parse(stdout.trim())).toMatchObject({ level: 'fatal', code: 'DataDirLockedError', msg: expect.stringMatching(/is in use by another process/) })
  })

  it('exits 3 on a corrupt key and leaves the key file as it was', async () => {
    const dir = await bed.tempDir()
    await writeFile(join(dir, 'node.key'), 'garbage', { mode: 0o600 })
    const { code, stdout } = await metagrid(['start', '--data-dir', dir, '--api', '127.0.0.1:0', '--listen', '/ip4/127.0.0.1/tcp/0'])
    expect(code).toBe(3)
    expect(JSON.parse(stdout.trim())).toMatchObject({ level: 'fatal', code: 'KeyFileError', msg: expect.stringMatching(/key file is corrupt/) })
    expect(await readFile(join(dir, 'node.key'), 'utf8')).toBe('garbage')
  })

  it('exits 4 when the API port is taken', async () => {
    const server = createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as { port: number }).port
    try {
      const { code, stdout } = await metagrid(['start', '--data-dir', await bed.tempDir(), '--api', `127.0.0.1:${port}`, '--listen', '/ip4/127.0.0.1/tcp/0'])
      expect(code).toBe(4)
      expect(stdout).toMatch(/"code":"AddressInUseError".*EADDRINUSE/)
    } finally {
      server.close()
    }
  })
})

describe('npx metagrid', () => {
  it('runs on the pinned Node 24 runtime, not the machine\'s', async () => {
    const node = await bed.start()
    const { code, stdout } = await run('npx', ['--no-install', 'metagrid', 'status', '--json', '--api', node.api])
    expect(code).toBe(0)
    const status = JSON.parse(stdout)
    expect(status.peerId).toBe(node.peerId)
    expect(status.node).toMatch(/^v24\./)
    const version = await run('npx', ['--no-install', 'metagrid', 'version'])
    expect(version.stdout).toMatch(/^\d+\.\d+\.\d+\n$/)
  })

  it('prints status as a table for humans', async () => {
    const node = await bed.start({ args: ['--region', 'DE-BY'] })
    const { code, stdout } = await metagrid(['status', '--api', node.api.replace('http://', '')])
    expect(code).toBe(0)
    expect(stdout).toMatch(new RegExp(`^peer id +${node.peerId}$`, 'm'))
    expect(stdout).toMatch(/^region +DE-BY$/m)
    expect(stdout).toMatch(/^peers +0$/m)
  })

  it('exits 5 when the API cannot be reached', async () => {
    const server = createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as { port: number }).port
    await new Promise((resolve) => server.close(resolve))
    const { code, stderr } = await metagrid(['status', '--api', `http://127.0.0.1:${port}`])
    expect(code).toBe(5)
    expect(stderr).toBe(`cannot reach the node's API at http://127.0.0.1:${port}: ECONNREFUSED\n`)
  })
})

describe('metagrid devnet', () => {
  it('starts N wired daemons, prints them, and stops them all on SIGTERM', async () => {
    const root = await bed.tempDir()
    const devnet = spawn(process.execPath, [BIN_PATH, 'devnet', '--nodes', '3', '--data-dir', root, '--json'], { cwd: ROOT, env: cleanDaemonEnv(process.env), stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<number | null>((resolve) => devnet.once('exit', resolve))
    let out = ''
    devnet.stdout.on('data', (chunk: Buffer) => { out += String(chunk) })
    const table = await waitFor('the devnet table', () => out.includes('\n') ? JSON.parse(out.split('\n')[0]!) : undefined, 60_000)
    expect(table.root).toBe(root)
    expect(table.nodes).toHaveLength(3)
    for (const node of table.nodes) {
      await waitFor(`${node.name} to see both others`, async () => (await getJson(node.api, '/v1/status')).peers >= 2)
    }
    const pids = await Promise.all(table.nodes.map(async (node: { dataDir: string }) => {
      const log = await readFile(join(node.dataDir, 'daemon.log'), 'utf8')
      return JSON.parse(log.split('\n').find((line) => line.includes('"ready"'))!).pid as number
    }))
    devnet.kill('SIGTERM')
    expect(await exited).toBe(0)
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow()
    // Data directories are kept when --data-dir was given, so the same identities come back next time.
    expect(await readFile(join(root, 'node-0', 'node.key'))).toHaveLength(68)
  })

  it('refuses a bad node count', async () => {
    const { code, stderr } = await metagrid(['devnet', '--nodes', '0'])
    expect(code).toBe(2)
    expect(stderr).toMatch(/--nodes = "0": expected an integer from 1 to 64/)
  })
})

