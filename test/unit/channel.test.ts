/**
 * The request channel (p2p/channel.ts) between two real libp2p nodes on
 * loopback: many requests share one stream and their answers come back in
 * any order; a request that times out leaves the others alone; the answering
 * side answers at most `maxConcurrent` at once; a frame it cannot take ends
 * the stream, counted, and the next request opens a new one.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { answerChannel, RequestChannel } from '../../p2p/channel.ts'
import { startTestPeer } from '../helpers/libp2p.ts'
import type { MetagridLibp2p } from '../../p2p/libp2p.ts'

const PROTOCOL = '/metagrid-test/channel/1.0.0'
let asker: MetagridLibp2p
let answerer: MetagridLibp2p
const rejected: string[] = []
let concurrent = 0
let maxSeen = 0

beforeAll(async () => {
  answerer = (await startTestPeer(undefined, ['/ip4/127.0.0.1/tcp/0'])).node
  asker = (await startTestPeer()).node
  const metrics = { wireRejected: { inc: (labels: { reason: string }) => { rejected.push(labels.reason) } } }
  await answerChannel(answerer, PROTOCOL, { name: 'test', maxFrameBytes: 1024, maxConcurrent: 4, maxStreams: 4, metrics, log: { debug: () => {} } }, async (request) => {
    const text = new TextDecoder().decode(request)
    if (text === 'bad') throw new Error('a request this side refuses')
    concurrent++
    maxSeen = Math.max(maxSeen, concurrent)
    try {
      // Later requests are answered first: answers come back out of order.
      const [, wait] = /^(?:\w+)-(\d+)$/.exec(text) ?? []
      await sleep(Number(wait ?? 0))
      return new TextEncoder().encode(`answer to ${text}`)
    } finally {
      concurrent--
    }
  })
  await asker.dial(answerer.getMultiaddrs()[0]!)
})

afterAll(async () => {
  await asker?.stop()
  await answerer?.stop()
})

const streamsOf = (node: MetagridLibp2p): number => node.getConnections().flatMap((c) => c.streams).filter((s) => s.protocol === PROTOCOL).length
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes)

describe('request channel', () => {
  it('carries many requests on one stream, each answer to its own request, whatever their order, at most maxConcurrent at once', async () => {
    const channel = new RequestChannel(asker, { protocol: PROTOCOL, maxFrameBytes: 1024, maxPending: 256 })
    const answers = await Promise.all(Array.from({ length: 100 }, async (_, i) => text(await channel.request(answerer.peerId, new TextEncoder().encode(`r${i}-${(100 - i) % 7 * 3}`), 10_000))))
    expect(answers).toEqual(Array.from({ length: 100 }, (_, i) => `answer to r${i}-${(100 - i) % 7 * 3}`))
    expect(streamsOf(asker)).toBe(1)
    expect(maxSeen).toBeLessThanOrEqual(4)
    expect(maxSeen).toBeGreaterThan(1)
    channel.stop()
  })

  it('times out one request without failing the others, and ignores its late answer', async () => {
    const channel = new RequestChannel(asker, { protocol: PROTOCOL, maxFrameBytes: 1024, maxPending: 256 })
    const slow = channel.request(answerer.peerId, new TextEncoder().encode('slow-400'), 100)
    const quick = channel.request(answerer.peerId, new TextEncoder().encode('quick-0'), 5_000)
    await expect(slow).rejects.toMatchObject({ code: 'TIMEOUT' })
    expect(text(await quick)).toBe('answer to quick-0')
    await sleep(400)
    expect(text(await channel.request(answerer.peerId, new TextEncoder().encode('after-0'), 5_000))).toBe('answer to after-0')
    channel.stop()
  })

  it('refuses more than maxPending requests in flight to one peer at once', async () => {
    const channel = new RequestChannel(asker, { protocol: PROTOCOL, maxFrameBytes: 1024, maxPending: 2 })
    const first = [channel.request(answerer.peerId, new TextEncoder().encode('a-50'), 5_000), channel.request(answerer.peerId, new TextEncoder().encode('b-50'), 5_000)]
    await expect(channel.request(answerer.peerId, new TextEncoder().encode('c-0'), 5_000)).rejects.toMatchObject({ code: 'BUSY' })
    expect((await Promise.all(first)).map(text)).toEqual(['answer to a-50', 'answer to b-50'])
    channel.stop()
  })

  it('ends a stream whose request the answering side refuses, counted, and opens a new one for the next request', async () => {
    const channel = new RequestChannel(asker, { protocol: PROTOCOL, maxFrameBytes: 1024, maxPending: 16 })
    const before = rejected.length
    const waiting = channel.request(answerer.peerId, new TextEncoder().encode('waiting-300'), 5_000)
    await expect(channel.request(answerer.peerId, new TextEncoder().encode('bad'), 5_000)).rejects.toBeDefined()
    // Everything in flight on that stream fails with it.
    await expect(waiting).rejects.toBeDefined()
    expect(rejected.length).toBe(before + 1)
    expect(text(await channel.request(answerer.peerId, new TextEncoder().encode('next-0'), 5_000))).toBe('answer to next-0')
    channel.stop()
  })
})
