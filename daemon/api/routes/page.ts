/**
 * The node's pages, static HTML with inline script and no third-party code,
 * each talking to this node alone (its CSP):
 *
 * - `GET /`: a read-only page (page.html) that shows the mesh on its network
 *   coordinates, each node's load, the shard placement and lease holders,
 *   and SLO status, refreshed every 2 s from the JSON API;
 * - `GET /world`, with world sessions: the demo world page (world.html), a
 *   canvas of the players around you, who moves with the arrow keys or a
 *   click, over a world session with this node (on loopback it needs no
 *   token), and `GET /client.js`, the WorldClient SDK bundled for browsers
 *   (world/bundle.ts), which that page imports.
 */
import { readFileSync } from 'node:fs'
import { clientBundle } from '../../world/bundle.ts'
import type { FastifyInstance, FastifyReply } from 'fastify'

const MESH_PAGE = readFileSync(new URL('../page.html', import.meta.url))
const WORLD_PAGE = readFileSync(new URL('../world.html', import.meta.url))
const COMMON_CSP = "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
const MESH_CSP = `${COMMON_CSP}; script-src 'unsafe-inline'; img-src 'self' data:`
const WORLD_CSP = `${COMMON_CSP}; script-src 'self' 'unsafe-inline'`

async function send (reply: FastifyReply, type: string, body: Uint8Array, csp?: string): Promise<FastifyReply> {
  if (csp != null) void reply.header('content-security-policy', csp)
  return reply
    .header('x-content-type-options', 'nosniff')
    .header('cache-control', 'no-cache')
    .type(type)
    .send(Buffer.from(body))
}

export function registerPageRoutes (app: FastifyInstance, options: { world: boolean }): void {
  app.get('/', async (_request, reply) => send(reply, 'text/html; charset=utf-8', MESH_PAGE, MESH_CSP))
  if (!options.world) return
  app.get('/world', async (_request, reply) => send(reply, 'text/html; charset=utf-8', WORLD_PAGE, WORLD_CSP))
  app.get('/client.js', async (_request, reply) => send(reply, 'text/javascript; charset=utf-8', await clientBundle()))
}
