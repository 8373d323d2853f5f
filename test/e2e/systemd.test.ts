/**
 * The systemd unit as shipped: `systemd-analyze verify` accepts it, its
 * offline security exposure is at most 2.0, and the daemon speaks the
 * notification protocol it relies on (READY=1, WATCHDOG=1 kicks at a third
 * of the interval, STOPPING=1) to a real AF_UNIX datagram socket standing in
 * for systemd's.
 */
import { execFile, spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../../daemon/config/load.ts'
import { cleanDaemonEnv, spawnDaemon } from '../../daemon/process.ts'
import { makeTempDir, waitFor } from '../helpers/daemons.ts'

const ROOT = new URL('../..', import.meta.url).pathname.replace(/\/$/, '')
const UNIT = join(ROOT, 'systemd', 'metagrid.service')
const run = promisify(execFile)

/** The unit with the install prefix pointed at this checkout, so `verify` finds the executable. */
async function localUnit (): Promise<string> {
  const dir = await makeTempDir('metagrid-unit-')
  const path = join(dir, 'metagrid.service')
  await writeFile(path, (await readFile(UNIT, 'utf8')).replaceAll('/opt/metagrid', ROOT))
  return path
}

describe('systemd unit', () => {
  it('passes systemd-analyze verify', async () => {
    const { stdout, stderr } = await run('systemd-analyze', ['verify', await localUnit()])
    expect(`${stdout}${stderr}`.trim()).toBe('')
  })

  it('ships an environment file example the config accepts, commented lines included', async () => {
    const text = await readFile(join(ROOT, 'systemd', 'metagrid.env.example'), 'utf8')
    const env: NodeJS.ProcessEnv = {}
    for (const line of text.split('\n')) {
      const match = /^#?(METAGRID_[A-Z0-9_]+)=(.*)$/.exec(line)
      if (match != null) env[match[1]!] = match[2]!.replace('12D3KooW...', '12D3KooWEeYyMq3FcLvyKuN51sYXCFcy3vZcm3xRjTigKS5tBcLE')
    }
    expect(Object.keys(env).length).toBeGreaterThan(5)
    const { config } = await loadConfig({ env: { ...env, METAGRID_PLACEMENT_POLICY_FILE: undefined } })
    expect(config.listen).toEqual(['/ip4/0.0.0.0/tcp/4001', '/ip6/::/tcp/4001'])
  })

  it('has an offline security exposure of at most 2.0', async () => {
    const { stdout } = await run('systemd-analyze', ['security', '--offline=true', '--no-pager', await localUnit()])
    const exposure = Number(/Overall exposure level for [^:]+: ([\d.]+)/.exec(stdout)?.[1])
    console.log(`systemd-analyze security: exposure ${exposure}`)
    expect(exposure).toBeGreaterThanOrEqual(0)
    expect(exposure).toBeLessThanOrEqual(2.0)
    // V8 needs writable-executable memory; the README says why this one is left out.
    expect(await readFile(UNIT, 'utf8')).not.toMatch(/^MemoryDenyWriteExecute=yes/m)
  })
})

describe('systemd notification protocol', () => {
  it('reports ready, kicks the watchdog and says when it stops', async () => {
    const dir = await makeTempDir('metagrid-notify-')
    const socket = join(dir, 'notify.sock')
    // systemd's side: an AF_UNIX datagram socket, one message per line on stdout.
    const listener = spawn('python3', ['-c', [
      'import socket, sys',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      's.bind(sys.argv[1])',
      'print("listening", flush=True)',
      'while True:',
      '    print(s.recv(65536).decode().replace("\\n", " "), flush=True)'
    ].join('\n'), socket], { stdio: ['ignore', 'pipe', 'inherit'] })
    const messages: string[] = []
    createInterface({ input: listener.stdout }).on('line', (line) => messages.push(line))
    try {
      await waitFor('the notify socket', () => messages.includes('listening'))
      const daemon = spawnDaemon({
        args: ['--data-dir', join(dir, 'data'), '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--log-format', 'json'],
        // A 0.9 s watchdog: kicks every 0.3 s.
        env: cleanDaemonEnv(process.env, { NOTIFY_SOCKET: socket, WATCHDOG_USEC: '900000', METAGRID_PLACEMENT_ENABLED: 'false' })
      })
      const ready = await daemon.ready
      const pid = daemon.child.pid!
      const readyLine = await waitFor('READY=1', () => messages.find((m) => m.includes('READY=1')))
      expect(readyLine).toContain(`MAINPID=${pid}`)
      expect(readyLine).toContain(ready.peerId)
      await waitFor('three watchdog kicks', () => messages.filter((m) => m.includes('WATCHDOG=1') && m.includes(`MAINPID=${pid}`)).length >= 3 || undefined, 10_000)
      expect(await daemon.stop('SIGTERM')).toBe(0)
      await waitFor('STOPPING=1', () => messages.some((m) => m.includes('STOPPING=1')))
    } finally {
      listener.kill()
    }
  }, 60_000)
})
