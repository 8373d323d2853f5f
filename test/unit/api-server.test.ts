import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { z } from 'zod'
import { badRequest, parseInput } from '../../daemon/api/errors.ts'
import { createApiServer } from '../../daemon/api/server.ts'
import { createLogger } from '../../daemon/log/logger.ts'
import { Metrics } from '../../daemon/metrics.ts'

const metrics = new Metrics()
const app = createApiServer({ logger: createLogger({ level: 'silent', format: 'json' }), metrics })

beforeAll(async () => {
  app.get('/boom', async () => { throw new Error('secret internal detail at /srv/x.ts:12') })
  app.get('/refuse', async () => { throw badRequest('NO_THANKS', 'refused on purpose') })
  app.get('/limit', async (request) => parseInput(z.object({ limit: z.coerce.number().int().min(1) }), request.query, 'query'))
  app.post('/echo', async (request) => request.body)
  await app.ready()
})
afterAll(async () => app.close())

async function errorCount (code: string): Promise<number> {
  const metric = await metrics.apiErrors.get()
  return metric.values.find((value) => value.labels.code === code)?.value ?? 0
}

describe('API error envelope', () => {
  it('answers an unknown route with 404 JSON', async () => {
    const response = await app.inject({ method: 'GET', url: '/v1/nothing?x=1' })
    expect(response.statusCode).toBe(404)
    expect(response.json()).toEqual({ error: { code: 'NOT_FOUND', message: 'no route for GET /v1/nothing' } })
  })

  it('answers a failure with 500 and no internal detail, and counts it', async () => {
    const before = await errorCount('INTERNAL')
    const response = await app.inject({ method: 'GET', url: '/boom' })
    expect(response.statusCode).toBe(500)
    expect(response.json()).toEqual({ error: { code: 'INTERNAL', message: 'internal error; the node log has the details' } })
    expect(response.body).not.toMatch(/secret|\.ts/)
    expect(await errorCount('INTERNAL')).toBe(before + 1)
  })

  it('passes a deliberate refusal through with its code', async () => {
    const response = await app.inject({ method: 'GET', url: '/refuse' })
    expect(response.statusCode).toBe(400)
    expect(response.json()).toEqual({ error: { code: 'NO_THANKS', message: 'refused on purpose' } })
  })

  it('names the bad query field', async () => {
    const response = await app.inject({ method: 'GET', url: '/limit?limit=0' })
    expect(response.statusCode).toBe(400)
    expect(response.json().error.code).toBe('BAD_REQUEST')
    expect(response.json().error.message).toMatch(/^query\.limit: /)
  })

  it('refuses malformed JSON, a wrong content type and an oversized body with JSON errors', async () => {
    const bad = await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'application/json' }, payload: '{"a":' })
    expect(bad.statusCode).toBe(400)
    expect(bad.json().error.code).toBe('BAD_JSON')
    const media = await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'application/x-weird' }, payload: 'x' })
    expect(media.statusCode).toBe(415)
    expect(media.json().error.code).toBe('UNSUPPORTED_MEDIA_TYPE')
    const big = await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ a: 'x'.repeat(2 * 1024 * 1024) }) })
    expect(big.statusCode).toBe(413)
    expect(big.json().error.code).toBe('PAYLOAD_TOO_LARGE')
  })

  it('records request latency by route template', async () => {
    await app.inject({ method: 'GET', url: '/limit?limit=3' })
    const text = (await metrics.render()).body
    expect(text).toMatch(/metagrid_api_request_duration_seconds_count\{method="GET",route="\/limit",status="200"\} 1/)
  })
})

describe('the browser guard\'s Host check', () => {
  it('answers to IP literals, localhost names, the bound host and allow-listed names only', async () => {
    const { hostAllowed, hostName } = await import('../../daemon/api/browser-guard.ts')
    const options = { apiHost: '0.0.0.0', allowedHosts: ['grid.example.org'] }
    expect(['127.0.0.1:7311', '[::1]:7311', 'localhost:7311', 'app.localhost', '192.0.2.7', 'grid.example.org:443', 'GRID.example.org'].map((h) => hostAllowed(hostName(h), options))).toEqual([true, true, true, true, true, true, true])
    expect(['evil.test:7311', 'localhost.evil.test', '127.0.0.1.nip.io', ''].map((h) => hostAllowed(hostName(h), options))).toEqual([false, false, false, false])
  })
})
