/**
 * Shard state over HTTP: entity writes (acknowledged once durable), counters,
 * reads, and a Server-Sent Events change stream. Input is checked in full
 * before anything is written, so a refused request leaves the state as it was.
 */
import { z } from 'zod'
import { ApiError, badRequest, notFound, parseInput } from '../errors.ts'
import { shardId } from '../../config/schema.ts'
import { checkComponents, MAX_NAME_LENGTH, ShardDocError } from '../../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../../storage/crdt/codec.ts'
import { UnknownShardError, type Replication } from '../../../p2p/sync/replication.ts'
import type { ShardStore } from '../../../storage/shard-store.ts'
import type { Authorize } from '../authorize.ts'
import type { Metrics } from '../../metrics.ts'
import type { FastifyInstance, FastifyReply } from 'fastify'

/** A subscriber this far behind is dropped rather than buffered without bound. */
const MAX_SSE_BUFFER_BYTES = 1024 * 1024
const MAX_SSE_SUBSCRIBERS = 256
/** A remote patch changing more entities than this is announced as one `resync` event. */
const MAX_EVENTS_PER_PATCH = 1000
const HEARTBEAT_MS = 15_000
const MAX_BATCH_OPS = 1000

// eslint-disable-next-line no-control-regex
const name = z.string().min(1).max(MAX_NAME_LENGTH).regex(/^[^\u0000-\u001f]+$/, { error: 'expected no control characters' })
const shardParams = z.strictObject({ shard: shardId })
const entityParams = z.strictObject({ shard: shardId, entity: name })
const counterParams = z.strictObject({ shard: shardId, name })
const components = z.record(name, z.json())
const patchComponents = z.record(name, z.json())
const putBody = z.strictObject({ components })
const patchBody = z.strictObject({ components: patchComponents.refine((value) => Object.keys(value).length > 0, { error: 'expected at least one component' }) })
const incrementBody = z.strictObject({ by: z.int().refine((by) => by !== 0 && Number.isSafeInteger(by), { error: 'expected a non-zero safe integer' }).default(1) }).prefault({})
const listQuery = z.strictObject({ limit: z.coerce.number().int().min(0).max(10_000).default(1000), after: name.optional() })
const batchOp = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('put'), entity: name, components }),
  z.strictObject({ op: z.literal('patch'), entity: name, components: patchComponents }),
  z.strictObject({ op: z.literal('delete'), entity: name }),
  z.strictObject({ op: z.literal('increment'), counter: name, by: z.int().refine((by) => by !== 0 && Number.isSafeInteger(by), { error: 'expected a non-zero safe integer' }) })
])
const batchBody = z.strictObject({ ops: z.array(batchOp).min(1).max(MAX_BATCH_OPS) })

export interface ShardRouteComponents {
  replication: Replication
  /** Refuses a write the caller may not make (see authorize.ts). */
  authorize: Authorize
  metrics: Metrics | null
  maxValueBytes: number
  /** Refuses a write this node may not take under the lease rules (placement.ts), before anything is read or written. */
  guardWrite?: (shard: string, epoch: number | undefined) => void
  /** After a write is durable here: waits for the shard's write concern (a majority of its voters for host layers); throws an ApiError when it is not met. */
  writeConcern?: (shard: string) => Promise<void>
}

/** Clients of host-authoritative shards name the lease epoch they believe in; a write under an older one is refused. */
const epochHeader = z.coerce.number().int().min(1).optional()

interface Subscriber {
  reply: FastifyReply
  shard: string
}

/**
 * Checks each write's names and values by the document's own rules (the same
 * the admission layer holds remote writes to) before anything is written.
 */
function checkValues (entity: string, values: Record<string, unknown>, maxValueBytes: number): void {
  try {
    checkComponents(entity, values as Record<string, JsonValue | null>, maxValueBytes)
  } catch (err) {
    if (err instanceof ShardDocError) throw err.code === 'VALUE_TOO_LARGE' ? new ApiError(413, err.code, err.message) : badRequest(err.code, err.message)
    throw err
  }
}

export function registerShardRoutes (app: FastifyInstance, deps: ShardRouteComponents): void {
  const { replication, metrics } = deps
  const subscribers = new Set<Subscriber>()

  const store = (shard: string): ShardStore => {
    try {
      return replication.shard(shard)
    } catch (err) {
      if (err instanceof UnknownShardError) throw notFound('UNKNOWN_SHARD', err.message)
      throw err
    }
  }

  const send = (subscriber: Subscriber, event: string, data: unknown): void => {
    const raw = subscriber.reply.raw
    if (raw.writableLength > MAX_SSE_BUFFER_BYTES) {
      // A slow reader: drop it (it can reconnect and re-read) rather than buffer without bound.
      raw.end()
      subscribers.delete(subscriber)
      return
    }
    raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
  }

  const announce = (shard: string, doc: ShardStore['doc'], entities: Iterable<string>, counters: Iterable<string>, origin: 'local' | 'remote'): void => {
    if (subscribers.size === 0) return
    const entityList = [...entities]
    const counterList = [...counters]
    for (const subscriber of subscribers) {
      if (subscriber.shard !== shard) continue
      if (entityList.length + counterList.length > MAX_EVENTS_PER_PATCH) {
        send(subscriber, 'resync', { shard, entities: entityList.length, counters: counterList.length })
        continue
      }
      for (const entity of entityList) send(subscriber, 'entity', { shard, entity, components: doc.entity(entity)?.components ?? null, origin })
      for (const counter of counterList) send(subscriber, 'counter', { shard, name: counter, value: doc.counter(counter), origin })
    }
  }

  // Every write checks the caller first; reads of shard state are public.
  app.addHook('preHandler', async (request) => {
    if (request.method === 'GET' || request.method === 'HEAD') return
    const url = request.routeOptions.url ?? ''
    if (!url.startsWith('/v1/shards/')) return
    const { shard } = request.params as { shard?: string }
    // System shards are written by the node itself under per-entry ownership rules, never through the API.
    if (shard?.startsWith('sys.') === true) throw new ApiError(403, 'SYSTEM_SHARD', `${shard} is a system shard; its entries are written by the node that owns them`)
    await deps.authorize(request, `shard:${shard ?? ''}`, 'write')
    if (deps.guardWrite != null && shard != null) {
      const epoch = parseInput(epochHeader, request.headers['x-metagrid-epoch'], 'headers')
      deps.guardWrite(shard, epoch)
    }
  })

  replication.addEventListener('change', (event) => {
    const { shard, result, local } = event.detail
    if (local || result == null) return // the route that wrote it announces it
    announce(shard, replication.shard(shard).doc, result.entities, result.counters, 'remote')
  })

  /** A write is answered once durable here and, where the shard asks for it, on a majority of its voters. */
  const commit = async (shard: string, target: ShardStore): Promise<void> => {
    await target.commit()
    await deps.writeConcern?.(shard)
  }

  const written = (shard: ShardStore, extra: Record<string, unknown>): Record<string, unknown> => ({
    shard: shard.shard,
    ...extra,
    hlc: { wall: shard.doc.clock.wall, counter: shard.doc.clock.counter },
    seq: shard.doc.lastSeq
  })

  app.get('/v1/shards', async () => ({
    shards: replication.served().map((id) => {
      const { doc } = replication.shard(id)
      return { shard: id, entities: doc.entityIds().length, counters: doc.counterNames().length, versionVector: doc.context.toVersionVector() }
    })
  }))

  app.get('/v1/shards/:shard', async (request) => {
    const { shard } = parseInput(shardParams, request.params, 'params')
    const query = parseInput(listQuery, request.query, 'query')
    const { doc } = store(shard)
    const ids = doc.entityIds()
    const start = query.after == null ? 0 : ids.findIndex((id) => id > query.after!)
    const page = start < 0 ? [] : ids.slice(start, start + query.limit)
    return {
      shard,
      entityCount: ids.length,
      entities: page.map((id) => doc.entity(id)),
      ...(start >= 0 && start + query.limit < ids.length ? { next: page[page.length - 1] } : {}),
      counters: Object.fromEntries(doc.counterNames().map((counter) => [counter, doc.counter(counter)])),
      versionVector: doc.context.toVersionVector()
    }
  })

  app.get('/v1/shards/:shard/entities/:entity', async (request) => {
    const { shard, entity } = parseInput(entityParams, request.params, 'params')
    const view = store(shard).doc.entity(entity)
    if (view == null) throw notFound('UNKNOWN_ENTITY', `shard ${shard} has no entity ${entity}`)
    return view
  })

  /** PUT replaces an entity's components, PATCH changes some (null deletes one); both answer once durable. */
  for (const [method, kind, schema] of [['PUT', 'put', putBody], ['PATCH', 'patch', patchBody]] as const) {
    app.route({
      method,
      url: '/v1/shards/:shard/entities/:entity',
      handler: async (request) => {
        const { shard, entity } = parseInput(entityParams, request.params, 'params')
        const body = parseInput(schema, request.body, 'body')
        const target = store(shard)
        checkValues(entity, body.components, deps.maxValueBytes)
        if (kind === 'put') target.doc.putEntity(entity, body.components as Record<string, JsonValue>)
        else target.doc.patchEntity(entity, body.components as Record<string, JsonValue | null>)
        await commit(shard, target)
        metrics?.crdtWrites.inc({ kind })
        announce(shard, target.doc, [entity], [], 'local')
        return written(target, { entity })
      }
    })
  }

  app.delete('/v1/shards/:shard/entities/:entity', async (request) => {
    const { shard, entity } = parseInput(entityParams, request.params, 'params')
    const target = store(shard)
    const deleted = target.doc.deleteEntity(entity)
    await commit(shard, target)
    if (deleted) {
      metrics?.crdtWrites.inc({ kind: 'delete' })
      announce(shard, target.doc, [entity], [], 'local')
    }
    return written(target, { entity, deleted })
  })

  app.post('/v1/shards/:shard/counters/:name', async (request) => {
    const { shard, name: counter } = parseInput(counterParams, request.params, 'params')
    const body = parseInput(incrementBody, request.body ?? {}, 'body')
    const target = store(shard)
    target.doc.increment(counter, body.by)
    await commit(shard, target)
    metrics?.crdtWrites.inc({ kind: 'increment' })
    announce(shard, target.doc, [], [counter], 'local')
    return written(target, { name: counter, value: target.doc.counter(counter) })
  })

  app.get('/v1/shards/:shard/counters/:name', async (request) => {
    const { shard, name: counter } = parseInput(counterParams, request.params, 'params')
    return { shard, name: counter, value: store(shard).doc.counter(counter) }
  })

  /** Many writes, one durable commit: all of them are acknowledged together or none is. */
  app.post('/v1/shards/:shard/batch', async (request) => {
    const { shard } = parseInput(shardParams, request.params, 'params')
    const body = parseInput(batchBody, request.body, 'body')
    const target = store(shard)
    for (const op of body.ops) if (op.op === 'put' || op.op === 'patch') checkValues(op.entity, op.components, deps.maxValueBytes)
    const entities = new Set<string>()
    const counters = new Set<string>()
    for (const op of body.ops) {
      switch (op.op) {
        case 'put': target.doc.putEntity(op.entity, op.components as Record<string, JsonValue>); entities.add(op.entity); break
        case 'patch': target.doc.patchEntity(op.entity, op.components as Record<string, JsonValue | null>); entities.add(op.entity); break
        case 'delete': if (target.doc.deleteEntity(op.entity)) entities.add(op.entity); break
        case 'increment': target.doc.increment(op.counter, op.by); counters.add(op.counter); break
      }
    }
    await commit(shard, target)
    metrics?.crdtWrites.inc({ kind: 'batch' }, body.ops.length)
    announce(shard, target.doc, entities, counters, 'local')
    return written(target, { ops: body.ops.length })
  })

  app.get('/v1/shards/:shard/events', async (request, reply) => {
    const { shard } = parseInput(shardParams, request.params, 'params')
    store(shard)
    if (subscribers.size >= MAX_SSE_SUBSCRIBERS) throw new ApiError(503, 'TOO_MANY_SUBSCRIBERS', `at most ${MAX_SSE_SUBSCRIBERS} change streams at once`)
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    reply.raw.write(`: shard ${shard}\n\n`)
    const subscriber: Subscriber = { reply, shard }
    subscribers.add(subscriber)
    const heartbeat = setInterval(() => reply.raw.write(': keep-alive\n\n'), HEARTBEAT_MS)
    const done = (): void => {
      clearInterval(heartbeat)
      subscribers.delete(subscriber)
    }
    reply.raw.on('close', done)
    reply.raw.on('error', done)
  })

  // Before the server waits for open connections to end: a change stream never ends by itself.
  app.addHook('preClose', async () => {
    for (const subscriber of subscribers) subscriber.reply.raw.end()
    subscribers.clear()
  })
}
