/**
 * A node whose bootstrap peer is down when it starts keeps trying, and joins
 * when the peer comes back: a daemon that runs for months cannot depend on
 * its first dial.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, getJson, TestBed, waitFor } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

describe('bootstrap', () => {
  it('keeps dialing a bootstrap peer that is down, and joins when it is up', async () => {
    const port = await freePort()
    const seedDir = await bed.tempDir()
    const seed = await bed.start({ dataDir: seedDir, args: ['--listen', `/ip4/127.0.0.1/tcp/${port}`] })
    expect(await seed.process.stop()).toBe(0)

    const late = await bed.start({ args: ['--bootstrap', `/ip4/127.0.0.1/tcp/${port}/p2p/${seed.peerId}`] })
    await waitFor('a failed bootstrap dial', async () => (metricValue(await scrape(late.api), 'metagrid_bootstrap_dials_total', { result: 'failed' }) ?? 0) >= 2)
    expect((await getJson(late.api, '/v1/status')).peers).toBe(0)

    const back = await bed.start({ dataDir: seedDir, args: ['--listen', `/ip4/127.0.0.1/tcp/${port}`] })
    expect(back.peerId).toBe(seed.peerId)
    await waitFor('the late node to join', async () => (await getJson(late.api, '/v1/status')).peers === 1, 30_000)
    // Joined, and the keeper stopped dialing once it had a peer (libp2p's own redial of a peer it
    // knows can win the race to connect, so the keeper's successful dial may be zero).
    await new Promise((resolve) => setTimeout(resolve, 3_000))
    expect(metricValue(await scrape(late.api), 'metagrid_bootstrap_dials_total', { result: 'ok' }) ?? 0).toBeLessThanOrEqual(1)
  })
})
