/**
 * Federation on real daemons: an operator certifies two of three nodes with
 * the CLI; the mesh trusts only that operator. The uncertified node joins the
 * mesh and gossips, but never hosts or replicates a shard, and `metagrid mesh`
 * marks it. Every node attests what it runs. All three share a private
 * network key; a node with another key cannot connect to them at all.
 */
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { getJson, runCli, TestBed, waitFor, type TestDaemon } from '../helpers/daemons.ts'

const bed = new TestBed()
let nodes: TestDaemon[] = []
let operatorId: string
let env: NodeJS.ProcessEnv
let dir: string

const metagrid = runCli

beforeAll(async () => {
  dir = await bed.tempDir()
  operatorId = (await metagrid(['key', 'new', join(dir, 'operator.key')])).stdout.trim()
  expect((await metagrid(['key', 'psk', join(dir, 'swarm.key')])).code).toBe(0)
  env = {
    METAGRID_FEDERATION_TRUSTED_OPERATORS: operatorId,
    METAGRID_FEDERATION_PRIVATE_NETWORK_KEY_FILE: join(dir, 'swarm.key'),
    METAGRID_TELEMETRY_INTERVAL_MS: '500',
    METAGRID_PLACEMENT_WORLD_MAX_X: '200',
    METAGRID_PLACEMENT_WORLD_MAX_Y: '200',
    METAGRID_PLACEMENT_WORLD_CELL_SIZE: '100',
    METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([{ name: 'physics', consistency: 'host' }]),
    METAGRID_PLACEMENT_REPLICAS: '1',
    METAGRID_PLACEMENT_LEASE_MS: '6000',
    METAGRID_PLACEMENT_SETTLE_MS: '2000',
    METAGRID_PLACEMENT_TICK_MS: '500'
  }
  // Node identities exist before the nodes start, so the operator can certify them.
  const dataDirs: string[] = []
  for (let i = 0; i < 3; i++) {
    const dataDir = await bed.tempDir()
    const peerId = (await metagrid(['key', 'new', join(dataDir, 'node.key')])).stdout.trim()
    if (i < 2) {
      const out = join(dir, `node-${i}.cert`)
      const certified = await metagrid(['operator', 'certify', '--key', join(dir, 'operator.key'), '--node', peerId, '--ttl', '1d', '--out', out])
      expect(certified.code).toBe(0)
    }
    dataDirs.push(dataDir)
  }
  const certEnv = (i: number): NodeJS.ProcessEnv => (i < 2 ? { ...env, METAGRID_FEDERATION_CERTIFICATE_FILE: join(dir, `node-${i}.cert`) } : env)
  const first = await bed.start({ dataDir: dataDirs[0]!, env: certEnv(0) })
  const rest = await Promise.all([1, 2].map(async (i) => bed.start({ dataDir: dataDirs[i]!, args: ['--bootstrap', first.addrs[0]!], env: certEnv(i) })))
  nodes = [first, ...rest]
  await waitFor('all shards leased with every node a candidate', async () => {
    const v = await getJson(first.api, '/v1/placement')
    return v.candidates.length === 3 && v.shards.every((s: { lease: { valid: boolean } | null }) => s.lease?.valid === true)
  }, 90_000, 500)
}, 150_000)

afterAll(async () => bed.cleanup())

describe('federation', () => {
  it('never places a shard on a node of no trusted operator, and the mesh marks it', async () => {
    const outsider = nodes[2]!.peerId
    // Watch a few rounds: not one lease, voter or assignment on the outsider.
    for (let round = 0; round < 6; round++) {
      for (const node of nodes) {
        const v = await getJson(node.api, '/v1/placement')
        for (const s of v.shards) {
          expect(s.host).not.toBe(outsider)
          expect(s.replicas).not.toContain(outsider)
          expect(s.lease?.holder).not.toBe(outsider)
          expect(s.lease?.voters ?? []).not.toContain(outsider)
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    const mesh = await waitFor('the outsider to be marked', async () => {
      const m = await getJson(nodes[0]!.api, '/v1/mesh')
      return m.peers.some((p: { peerId: string, trust: string }) => p.peerId === outsider && p.trust === 'no-operator') ? m : undefined
    })
    expect(mesh.self).toMatchObject({ trust: 'trusted', operator: operatorId })
    expect(mesh.peers.find((p: { peerId: string }) => p.peerId === nodes[1]!.peerId)).toMatchObject({ trust: 'trusted', operator: operatorId })
    const table = await metagrid(['mesh', '--api', nodes[0]!.api])
    expect(table.stdout).toContain('no-operator (never hosts)')
    // It is in the mesh all the same: alive and gossiping.
    expect(mesh.peers.find((p: { peerId: string }) => p.peerId === outsider).state).toBe('alive')
    const explained = await getJson(nodes[0]!.api, '/v1/placement/explain/physics.0.0')
    expect(explained.candidates.find((c: { peerId: string }) => c.peerId === outsider).refusal).toBe('untrusted-operator')
  }, 60_000)

  it('attests what each node runs: code and config digests, runtime, no hardware quote, its operator', async () => {
    const [a, b] = await Promise.all([0, 2].map(async (i) => getJson(nodes[i]!.api, '/v1/attestation')))
    expect(a).toMatchObject({ node: nodes[0]!.peerId, operator: operatorId, quote: { kind: 'none' }, software: { name: 'metagrid' } })
    expect(b.operator).toBeNull()
    // Same release, same code digest; the CLI shows it.
    expect(a.software.codeDigest).toBe(b.software.codeDigest)
    const shown = await metagrid(['attest', '--api', nodes[0]!.api])
    expect(shown.stdout).toContain(a.software.codeDigest)
    expect(shown.stdout).toContain('software-only')
  })

  it('keeps a node with another private-network key out', async () => {
    const otherKey = join(dir, 'other.key')
    expect((await metagrid(['key', 'psk', otherKey])).code).toBe(0)
    const stranger = await bed.start({ args: ['--bootstrap', nodes[0]!.addrs[0]!], env: { ...env, METAGRID_FEDERATION_PRIVATE_NETWORK_KEY_FILE: otherKey } })
    await new Promise((resolve) => setTimeout(resolve, 5_000))
    expect((await getJson(stranger.api, '/v1/status')).peers).toBe(0)
    expect((await getJson(nodes[0]!.api, '/v1/status')).peers).toBe(2)
    // A key file that is not a swarm key stops the daemon with exit 2 and a line naming it.
    const bad = await metagrid(['start', '--data-dir', await bed.tempDir(), '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0'], { METAGRID_FEDERATION_PRIVATE_NETWORK_KEY_FILE: join(dir, 'operator.key') })
    expect(bad.code).toBe(2)
    expect(bad.stdout + bad.stderr).toContain('is not a swarm key')
  }, 60_000)
})
