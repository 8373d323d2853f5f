/**
 * The loopback API against the browser, in a real Chromium: a page on
 * another origin tries every way a page can reach a loopback service (a
 * body-less fetch, a form post, a JSON fetch that needs a preflight) and a
 * page that reached the API through DNS rebinding (its own name resolving to
 * 127.0.0.1) tries same-origin writes. Nothing changes, and each refusal is
 * counted by code.
 */
import { createServer, type Server } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chromium, type Browser } from 'playwright-core'
import { getJson, TestBed, type TestDaemon } from '../helpers/daemons.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'

const bed = new TestBed()
let daemon: TestDaemon
let browser: Browser
let attacker: Server
let attackerUrl: string
let apiPort: number

/** The attacker's page: it fires every kind of cross-origin request it can at the API, then says it is done. */
function attackPage (api: string): string {
  return `<!doctype html><html><body>
<form id="f" method="POST" action="${api}/v1/shards/default/counters/hits" enctype="text/plain" target="sink"><input name='{"by":1,"x":"' value='"}'></form>
<iframe name="sink"></iframe>
<script>
(async () => {
  const results = []
  const attempt = async (what, run) => { try { const r = await run(); results.push(what + ':' + (r.type === 'opaque' ? 'opaque' : r.status)) } catch (e) { results.push(what + ':blocked') } }
  await attempt('bodyless', () => fetch('${api}/v1/shards/default/counters/hits', { method: 'POST', mode: 'no-cors' }))
  await attempt('text', () => fetch('${api}/v1/shards/default/counters/hits', { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '{"by":1}' }))
  await attempt('json', () => fetch('${api}/v1/shards/default/entities/pwned', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"components":{"x":1}}' }))
  await attempt('read', () => fetch('${api}/v1/shards/default'))
  document.getElementById('f').submit()
  await new Promise((resolve) => setTimeout(resolve, 1000))
  document.title = 'done ' + results.join(' ')
})()
</script></body></html>`
}

beforeAll(async () => {
  daemon = await bed.start()
  apiPort = Number(new URL(daemon.api).port)
  attacker = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html' })
    response.end(attackPage(daemon.api))
  })
  await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve))
  // Another origin: another host name (resolved to loopback by Chromium's rule below) and port.
  attackerUrl = `http://attacker.test:${(attacker.address() as { port: number }).port}/`
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--host-resolver-rules=MAP attacker.test 127.0.0.1, MAP rebound.test 127.0.0.1']
  })
}, 60_000)

afterAll(async () => {
  await browser?.close()
  await new Promise((resolve) => attacker?.close(resolve))
  await bed.cleanup()
})

const refused = async (code: string): Promise<number> => metricValue(await scrape(daemon.api), 'metagrid_api_errors_total', { code }) ?? 0

describe('the loopback API in a browser', () => {
  it('changes nothing for a page on another origin, whatever request it makes', async () => {
    const before = { json: await refused('JSON_REQUIRED'), cross: await refused('CROSS_ORIGIN') }
    const page = await browser.newPage()
    await page.goto(attackerUrl)
    await page.waitForFunction('document.title.startsWith("done")', undefined, { timeout: 20_000 })
    const title = await page.title()
    // The JSON write never leaves the browser (its preflight gets no CORS grant); the simple requests do, and are refused.
    expect(title).toContain('json:blocked')
    expect((await getJson(daemon.api, '/v1/shards/default/counters/hits')).value).toBe(0)
    expect(await fetch(`${daemon.api}/v1/shards/default/entities/pwned`).then((r) => r.status)).toBe(404)
    expect((await refused('CROSS_ORIGIN')) + (await refused('JSON_REQUIRED'))).toBeGreaterThanOrEqual(before.json + before.cross + 3)
  }, 60_000)

  it('answers nothing to a page that reached it through DNS rebinding', async () => {
    const before = await refused('HOST_NOT_ALLOWED')
    const page = await browser.newPage()
    // The page's own origin now points at the API: same-origin to it, but named by the attacker.
    const response = await page.goto(`http://rebound.test:${apiPort}/`)
    expect(response?.status()).toBe(403)
    const statuses = await page.evaluate(async () => {
      const put = await fetch('/v1/shards/default/entities/rebound', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"components":{"x":1}}' })
      const read = await fetch('/v1/shards/default')
      return [put.status, read.status]
    })
    expect(statuses).toEqual([403, 403])
    expect(await fetch(`${daemon.api}/v1/shards/default/entities/rebound`).then((r) => r.status)).toBe(404)
    expect(await refused('HOST_NOT_ALLOWED')).toBeGreaterThanOrEqual(before + 3)
    // The operator's own page, on the address the API is bound to, still works.
    const own = await browser.newPage()
    expect((await own.goto(daemon.api))?.status()).toBe(200)
  }, 60_000)
})
