/**
 * `GET /`: a small read-only page (page.html) that shows the mesh on its
 * network coordinates, each node's load, the shard placement and lease
 * holders, and SLO status, refreshed every 2 s from the JSON API. No build
 * step and no third-party script: the page only talks to this node.
 */
import { readFileSync } from 'node:fs'
import type { FastifyInstance } from 'fastify'

const PAGE = readFileSync(new URL('../page.html', import.meta.url))
const CSP = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

export function registerPageRoutes (app: FastifyInstance): void {
  app.get('/', async (_request, reply) => reply
    .header('content-security-policy', CSP)
    .header('x-content-type-options', 'nosniff')
    .header('cache-control', 'no-cache')
    .type('text/html; charset=utf-8')
    .send(PAGE))
}
