/**
 * `GET /v1/discover`: nodes that can serve a request, nearest first, each with
 * its verified descriptor and why it ranked where it did.
 * `GET /v1/catalog`: this node's own descriptor, as it advertises it.
 */
import { z } from 'zod'
import { notFound, parseInput } from '../errors.ts'
import type { Catalog } from '../../../p2p/catalog/catalog.ts'
import type { Discovery } from '../../../p2p/catalog/discovery.ts'
import type { FastifyInstance } from 'fastify'

const list = z.union([z.string(), z.array(z.string())]).transform((value) => (Array.isArray(value) ? value : [value]))

export const discoverQuerySchema = z.strictObject({
  need: list.pipe(z.array(z.string().min(1).max(128)).max(16)).default([]),
  model: z.string().min(1).max(128).optional(),
  region: z.string().regex(/^[A-Za-z]{2}(?:-[A-Za-z0-9]{1,3})?$/, { error: 'expected an ISO 3166 code such as DE or US-CA' }).transform((value) => value.toUpperCase()).optional(),
  maxCost: z.coerce.number().min(0).optional(),
  currency: z.string().min(1).max(16).default('USD'),
  limit: z.coerce.number().int().min(1).max(100).default(10)
})

export interface CatalogRouteComponents {
  catalog: Catalog
  discovery: Discovery
}

export function registerCatalogRoutes (app: FastifyInstance, components: CatalogRouteComponents): void {
  app.get('/v1/discover', async (request) => {
    const query = parseInput(discoverQuerySchema, request.query, 'query')
    return components.discovery.discover({
      need: query.need,
      currency: query.currency,
      limit: query.limit,
      ...(query.model != null ? { model: query.model } : {}),
      ...(query.region != null ? { region: query.region } : {}),
      ...(query.maxCost != null ? { maxCost: query.maxCost } : {})
    })
  })

  app.get('/v1/catalog', async () => {
    const current = components.catalog.current()
    if (current == null) throw notFound('NO_DESCRIPTOR', 'this node has not built its descriptor yet')
    return { descriptor: current.descriptor, signed: Buffer.from(current.signed).toString('base64') }
  })
}
