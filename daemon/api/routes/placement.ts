/**
 * Placement over HTTP:
 * - `GET /v1/shards/locate?x=&y=&layer=`: the shard of a position, its host,
 *   replicas and lease epoch, so a client reaches the right node in one request;
 * - `GET /v1/placement`: the whole assignment and lease table, with a digest
 *   and this node's signature over it;
 * - `GET /v1/placement/explain/:shard`: every candidate's terms, score,
 *   rank and, for those ruled out, the rule that did it;
 * - `POST /v1/shards/:shard/entities/:entity/handoff` `{ to }`: moves an
 *   entity across a shard border (entity-handoff.ts), on the source's host.
 */
import { z } from 'zod'
import { ApiError, notFound, parseInput } from '../errors.ts'
import { EntityHandoffError, type EntityHandoff } from '../../../p2p/placement/entity-handoff.ts'
import { NotHostError, type Placement } from '../../../p2p/placement/placement.ts'
import { shardId } from '../../config/schema.ts'
import { MAX_NAME_LENGTH } from '../../../storage/crdt/patch-codec.ts'
import type { FastifyInstance } from 'fastify'

const locateQuery = z.strictObject({
  x: z.coerce.number().refine(Number.isFinite, { error: 'expected a finite number' }),
  y: z.coerce.number().refine(Number.isFinite, { error: 'expected a finite number' }),
  layer: z.string().min(1).max(24)
})

const handoffParams = z.strictObject({ shard: shardId, entity: z.string().min(1).max(MAX_NAME_LENGTH) })
const handoffBody = z.strictObject({ to: shardId })
const HANDOFF_STATUS: Record<EntityHandoffError['code'], number> = { UNKNOWN_ENTITY: 404, SAME_SHARD: 400, UNKNOWN_TARGET: 503, HANDOFF_ABORTED: 503 }

const STATUS: Record<NotHostError['code'], number> = { NOT_HOST: 421, NOT_REPLICA: 421, STALE_EPOCH: 409, HANDOFF_IN_PROGRESS: 503 }

/** The API's answer to a write the lease rules refuse: where the host is and under which epoch. */
export function notHost (err: NotHostError): ApiError {
  return new ApiError(STATUS[err.code], err.code, err.message, { host: err.host, epoch: err.epoch })
}

export function registerPlacementRoutes (app: FastifyInstance, placement: Placement, handoff: EntityHandoff | null): void {
  if (handoff != null) {
    // The shard routes' preHandler has already checked the caller's token and that this node hosts the source.
    app.post('/v1/shards/:shard/entities/:entity/handoff', async (request) => {
      const { shard, entity } = parseInput(handoffParams, request.params, 'params')
      const { to } = parseInput(handoffBody, request.body, 'body')
      if (placement.world.shard(to) == null) throw notFound('UNKNOWN_SHARD', `the world has no shard ${to}`)
      try {
        return await handoff.transfer(shard, entity, to)
      } catch (err) {
        if (err instanceof EntityHandoffError) throw new ApiError(HANDOFF_STATUS[err.code], err.code, err.message)
        if (err instanceof NotHostError) throw notHost(err)
        throw err
      }
    })
  }

  app.get('/v1/shards/locate', async (request) => {
    const { x, y, layer } = parseInput(locateQuery, request.query, 'query')
    if (placement.world.layer(layer) == null) throw notFound('UNKNOWN_LAYER', `the world has no layer ${layer}`)
    const located = placement.locate(x, y, layer)
    if (located == null) throw notFound('OUTSIDE_WORLD', `(${x}, ${y}) is outside the world`)
    return located
  })

  app.get('/v1/placement', async () => placement.view())

  app.get('/v1/placement/explain/:shard', async (request) => {
    const { shard } = parseInput(z.strictObject({ shard: z.string().min(1).max(64) }), request.params, 'params')
    const explained = placement.explain(shard)
    if (explained == null) throw notFound('UNKNOWN_SHARD', `the world has no shard ${shard}`)
    return explained
  })
}
