/**
 * What an operator sees, on a 3-node devnet: a real Prometheus (Debian's
 * package) scrapes every node and finds the key series, and its rule checker
 * accepts the shipped alerts; `/v1/slo` and `metagrid slo` report every
 * objective; a node whose API latency objective burns sheds decorative writes
 * and logs it; the page at `/`, driven in headless Chromium, shows every node
 * and every shard with its lease holder (screenshot in reports/).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort, getJson, runCli, TestBed, waitFor, type TestDaemon } from '../helpers/daemons.ts'

const ROOT = new URL('../..', import.meta.url).pathname
const run = promisify(execFile)
const SHARDS = 12
const ENV = {
  METAGRID_TELEMETRY_INTERVAL_MS: '500',
  METAGRID_PLACEMENT_WORLD_MAX_X: '200',
  METAGRID_PLACEMENT_WORLD_MAX_Y: '200',
  METAGRID_PLACEMENT_WORLD_CELL_SIZE: '100',
  METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([
    { name: 'physics', consistency: 'host' },
    { name: 'presence', consistency: 'crdt' },
    { name: 'decor', consistency: 'crdt', decorative: true }
  ]),
  METAGRID_PLACEMENT_LEASE_MS: '6000',
  METAGRID_PLACEMENT_MARGIN_MS: '500',
  METAGRID_PLACEMENT_TICK_MS: '500',
  METAGRID_PLACEMENT_SETTLE_MS: '2000',
  METAGRID_PLACEMENT_MIN_HOLD_MS: '3000',
  METAGRID_SLO_SLOT_MS: '1000',
  // A shared test machine cannot promise three nines of leases; the shedding test burns a different objective.
  METAGRID_SLO_SHARD_AVAILABILITY_TARGET: '0.5',
  METAGRID_SLO_CONVERGENCE_TARGET: '0.5'
}

const bed = new TestBed()
let nodes: TestDaemon[] = []
let prometheus: ChildProcess | undefined
const logs: string[] = []

beforeAll(async () => {
  const first = await bed.start({ env: ENV })
  const bootstrap = ['--bootstrap', first.addrs[0]!]
  // The third node's API latency objective is impossible (0 ms), so its budget burns as soon as it is asked anything.
  const rest = await Promise.all([
    bed.start({ args: bootstrap, env: ENV }),
    bed.start({ args: bootstrap, env: { ...ENV, METAGRID_SLO_API_LATENCY_MS: '0', METAGRID_SLO_MIN_EVENTS: '5' } })
  ])
  nodes = [first, ...rest]
  nodes[2]!.process.child.stdout?.on('data', (chunk: Buffer) => { logs.push(...chunk.toString().split('\n')) })
  await waitFor('all shards leased', async () => {
    const v = await getJson(nodes[0]!.api, '/v1/placement')
    return v.candidates.length === 3 && v.shards.every((s: { lease: { valid: boolean } | null }) => s.lease?.valid === true)
  }, 90_000, 500)
}, 120_000)

afterAll(async () => {
  prometheus?.kill('SIGKILL')
  await bed.cleanup()
})

describe('operations on a 3-node devnet', () => {
  it('a real Prometheus scrapes every node and finds the key series; the shipped alert rules load', async () => {
    const dir = await bed.tempDir()
    const port = await freePort()
    const targets = nodes.map((n) => new URL(n.api).host)
    await writeFile(join(dir, 'prometheus.yml'), [
      'global: { scrape_interval: 1s, evaluation_interval: 1s }',
      `rule_files: [${JSON.stringify(join(ROOT, 'daemon', 'alerts.yml'))}]`,
      'scrape_configs:',
      '  - job_name: metagrid',
      `    static_configs: [{ targets: ${JSON.stringify(targets)} }]`
    ].join('\n'))
    const check = await run('promtool', ['check', 'config', join(dir, 'prometheus.yml')])
    expect(check.stdout).toContain('SUCCESS')
    prometheus = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' })
    const api = `http://127.0.0.1:${port}`
    await waitFor('prometheus to be ready', async () => (await fetch(`${api}/-/ready`)).ok, 60_000, 500)
    await waitFor('every target up', async () => {
      const body = await getJson(api, '/api/v1/targets')
      const active = body.data.activeTargets as Array<{ health: string }>
      return active.length === 3 && active.every((t) => t.health === 'up')
    }, 60_000, 500)
    const query = async (q: string): Promise<number> => (await getJson(api, `/api/v1/query?query=${encodeURIComponent(q)}`)).data.result.length
    for (const series of [
      'metagrid_build_info', 'metagrid_api_request_duration_seconds_bucket', 'metagrid_probe_rtt_seconds_count',
      'metagrid_gossip_messages_total', 'metagrid_members', 'metagrid_placement_leases_held', 'metagrid_placement_lease_epoch_max',
      'metagrid_slo_error_budget_remaining', 'metagrid_breaker_open', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_heap_size_used_bytes', 'libp2p_connection_manager_connections'
    ]) {
      await waitFor(`${series} from all three nodes`, async () => (await query(`count by (instance) (${series})`)) === 3, 30_000, 1_000)
    }
    const rules = await getJson(api, '/api/v1/rules')
    expect(rules.data.groups[0].rules.length).toBeGreaterThanOrEqual(10)
  }, 150_000)

  it('reports every objective over HTTP and on the command line', async () => {
    const report = await getJson(nodes[0]!.api, '/v1/slo')
    expect(report.objectives.map((o: { name: string }) => o.name)).toEqual(['api-latency', 'convergence', 'shard-availability'])
    await waitFor('shard availability to have data', async () => (await getJson(nodes[0]!.api, '/v1/slo')).objectives[2].total > 0, 20_000)
    const { code, stdout } = await runCli(['slo', '--api', nodes[0]!.api])
    expect(code).toBe(0)
    expect(stdout).toContain('API requests answered within 250 ms')
    expect(stdout).toContain('breaker decorative: closed')
  })

  it('sheds decorative writes while an objective burns its budget, and says so in the log', async () => {
    const node = nodes[2]!
    // Any shard this node can write to: a decorative one it replicates, and a presence one for contrast.
    const placement = await getJson(node.api, '/v1/placement')
    const mine = (layer: string): string => placement.shards.find((s: { layer: string, host: string, replicas: string[] }) => s.layer === layer && (s.host === node.peerId || s.replicas.includes(node.peerId))).shard
    const decor = mine('decor')
    const presence = mine('presence')
    await waitFor('the breaker to open', async () => (await getJson(node.api, '/v1/slo')).breakers[0].open === true, 30_000, 300)
    const shed = await fetch(`${node.api}/v1/shards/${decor}/entities/sparkle`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ components: { hue: 1 } }) })
    expect(shed.status).toBe(503)
    expect(((await shed.json()) as { error: { code: string } }).error.code).toBe('SHED_LOAD')
    const kept = await fetch(`${node.api}/v1/shards/${presence}/entities/player-1`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ components: { at: [1, 2] } }) })
    expect(kept.status).toBe(200)
    expect(logs.some((line) => line.includes('"code":"SHEDDING_DECORATIVE"'))).toBe(true)
    // The healthy nodes do not shed.
    expect((await getJson(nodes[0]!.api, '/v1/slo')).breakers[0].open).toBe(false)
  }, 60_000)

  it('serves a live page that shows every node and every shard with its lease holder', async () => {
    const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] })
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const errors: string[] = []
      page.on('pageerror', (err) => errors.push(err.message))
      const response = await page.goto(nodes[0]!.api)
      expect(response?.headers()['content-security-policy']).toContain("default-src 'none'")
      await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 })
      for (const node of nodes) {
        await page.waitForSelector(`svg [data-node="${node.peerId}"]`, { timeout: 20_000 })
        await page.waitForSelector(`#nodes [data-node-row="${node.peerId}"]`)
      }
      await waitFor('every shard cell to show a holder', async () => (await page.$$eval('[data-shard]', (cells) => cells.filter((c) => (c.getAttribute('data-holder') ?? '') !== '').length)) === SHARDS, 20_000, 500)
      const holders = await page.$$eval('[data-shard]', (cells) => cells.map((c) => c.getAttribute('data-holder')))
      const placement = await getJson(nodes[0]!.api, '/v1/placement')
      expect(new Set(holders).size).toBeGreaterThan(1)
      for (const h of holders) expect(placement.candidates).toContain(h)
      expect(await page.$$eval('#slo [data-objective]', (rows) => rows.length)).toBe(3)
      await mkdir(join(ROOT, 'reports'), { recursive: true })
      await page.screenshot({ path: join(ROOT, 'reports', 'mesh-page.png'), fullPage: true })
      expect(errors).toEqual([])
    } finally {
      await browser.close()
    }
  }, 90_000)
})
