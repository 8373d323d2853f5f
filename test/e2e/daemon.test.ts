/**
 * Three daemon processes started through the CLI, wired by bootstrap: they
 * connect, find each other through the DHT, stop cleanly on SIGTERM, and a
 * restarted node keeps its identity and its routing table.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { getJson, TestBed, waitFor, type TestDaemon } from '../helpers/daemons.ts'

const bed = new TestBed()
let seed: TestDaemon
let b: TestDaemon
let c: TestDaemon

beforeAll(async () => {
  seed = await bed.start()
  // b and c are told only about the seed; anything they learn of each other comes through the DHT.
  ;[b, c] = await Promise.all([
    bed.start({ args: ['--bootstrap', seed.addrs[0]!] }),
    bed.start({ args: ['--bootstrap', seed.addrs[0]!] })
  ])
})
afterAll(async () => bed.cleanup())

describe('a three-node mesh of daemon processes', () => {
  it('reports at least two peers on every node', async () => {
    for (const node of [seed, b, c]) {
      await waitFor(`${node.peerId} to see 2 peers`, async () => (await getJson(node.api, '/v1/status')).peers >= 2)
    }
    const status = await getJson(b.api, '/v1/status')
    expect(status).toMatchObject({ peerId: b.peerId, version: expect.any(String), node: expect.stringMatching(/^v2[4-9]\./) })
    expect(status.addrs).toEqual(b.addrs)
    expect(status.uptimeS).toBeGreaterThanOrEqual(0)
    // A peer's agent is known once identify has run on the connection; a loaded machine can lag it by a moment.
    const { peers } = await waitFor('identify to finish with both peers', async () => {
      const answer = await getJson(b.api, '/v1/peers')
      return answer.peers.every((peer: { agent: unknown }) => typeof peer.agent === 'string') ? answer : undefined
    })
    expect(peers.map((peer: { peerId: string }) => peer.peerId).sort()).toEqual([seed.peerId, c.peerId].sort())
    for (const peer of peers) {
      // Two nodes that dial each other at the same moment can hold two connections; each is listed.
      for (const addr of peer.addrs) expect(addr).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
      expect(peer.agent).toMatch(/^metagrid\//)
    }
  })

  it('finds every other node with a DHT query', async () => {
    for (const from of [seed, b, c]) {
      for (const to of [seed, b, c]) {
        if (from === to) continue
        const found = await waitFor(`${from.peerId} to find ${to.peerId}`, async () => getJson(from.api, `/v1/dht/peers/${to.peerId}`))
        expect(found.peerId).toBe(to.peerId)
        expect(found.addrs).toContain(to.addrs[0]!.replace(`/p2p/${to.peerId}`, ''))
      }
    }
    // The routing table takes peers in through an asynchronous queue after they answer.
    const dht = await waitFor('both others in the routing table', async () => {
      const { dht } = await getJson(c.api, '/v1/status')
      return dht.routingTable === 2 ? dht : undefined
    })
    expect(dht).toEqual({ mode: 'server', routingTable: 2 })
  })

  it('answers a lookup for a peer nobody knows with 404', async () => {
    const response = await fetch(`${b.api}/v1/dht/peers/12D3KooWNFBn5sWgNob1oDEUEkPbomk8gWA39jVo8QBQSF42p4PR`)
    expect(response.status).toBe(404)
    expect((await response.json() as any).error.code).toBe('PEER_NOT_FOUND')
    const bad = await fetch(`${b.api}/v1/dht/peers/not-a-peer`)
    expect(bad.status).toBe(400)
    expect((await bad.json() as any).error.code).toBe('BAD_PEER_ID')
  })

  it('serves Prometheus metrics with libp2p and metagrid series', async () => {
    const text = await (await fetch(`${b.api}/metrics`)).text()
    expect(text).toMatch(/^metagrid_peers_connected 2$/m)
    expect(text).toMatch(/^metagrid_build_info\{version="[^"]+",node="v2\d\.[^"]+"\} 1$/m)
    expect(text).toMatch(/^libp2p_connection_manager_connections\{/m)
    expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m)
  })

  it('stops on SIGTERM with exit 0, and a restart keeps the peer id and the routing table', async () => {
    expect(await b.process.stop('SIGTERM')).toBe(0)
    expect(b.process.tail.join('\n')).toMatch(/"msg":"stopped"/)
    // No --bootstrap this time: whatever it finds, it finds from its own data directory.
    const again = await bed.start({ dataDir: b.dataDir })
    expect(again.peerId).toBe(b.peerId)
    await waitFor('the restarted node to reload its routing table', async () => (await getJson(again.api, '/v1/status')).dht.routingTable >= 1)
    expect(await again.process.stop('SIGINT')).toBe(0)
  })
})
