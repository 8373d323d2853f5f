/**
 * Shard state over HTTP: entity writes (acknowledged once durable), counters,
 * reads, and a Server-Sent Events change stream. Input is checked in full
 * before anything is written, so a refused request leaves the state as it was.
 */
import { z } from 'zod'
import { ApiError, notFound, parseInput } from '../errors.ts'
import { shardId } from '../../config/schema.ts'
import { MAX_NAME_LENGTH } from '../../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../../storage/crdt/codec.ts'
import type { Replication } from '../../../p2p/sync/replication.ts'
import type { ShardStore } from '../../../storage/shard-store.ts'
import type { Authorize } from '../authorize.ts'
import type { ShardWriter, WriteOp } from '../../world/writes.ts'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

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
  /** Every write goes through it (writes.ts): values, lease rules, commit, write concern. */
  writer: ShardWriter
  /** Refuses a write the caller may not make (see authorize.ts). */
  authorize: Authorize
}

/** Clients of host-authoritative shards name the lease epoch they believe in; a write under an older one is refused. */
const epochHeader = z.coerce.number().int().min(1).optional()

interface Subscriber {
  reply: FastifyReply
  shard: string
}

export function registerShardRoutes (app: FastifyInstance, deps: ShardRouteComponents): void {
  const { replication, writer } = deps
  const subscribers = new Set<Subscriber>()
  const store = (shard: string): ShardStore => writer.store(shard)

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
    if (shard?.startsWith('sys.') === true) writer.guard(shard, undefined)
    await deps.authorize(request, `shard:${shard ?? ''}`, 'write')
    // The lease check before the body is read (the handoff route relies on it too); the writer checks again as it writes.
    if (shard != null) writer.guard(shard, epochOf(request))
  })

  replication.addEventListener('change', (event) => {
    const { shard, result, local } = event.detail
    if (local || result == null) return // the route that wrote it announces it
    announce(shard, replication.shard(shard).doc, result.entities, result.counters, 'remote')
  })

  writer.onWritten((shard, target, entities, counters) => { announce(shard, target.doc, entities, counters, 'local') })
  const epochOf = (request: FastifyRequest): number | undefined => parseInput(epochHeader, request.headers['x-metagrid-epoch'], 'headers')

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
        const op: WriteOp = kind === 'put' ? { op: 'put', entity, components: body.components as Record<string, JsonValue> } : { op: 'patch', entity, components: body.components as Record<string, JsonValue | null> }
        const { store: target } = await writer.write(shard, [op], epochOf(request))
        return written(target, { entity })
      }
    })
  }

  app.delete('/v1/shards/:shard/entities/:entity', async (request) => {
    const { shard, entity } = parseInput(entityParams, request.params, 'params')
    const { store: target, entities } = await writer.write(shard, [{ op: 'delete', entity }], epochOf(request))
    return written(target, { entity, deleted: entities.size > 0 })
  })

  app.post('/v1/shards/:shard/counters/:name', async (request) => {
    const { shard, name: counter } = parseInput(counterParams, request.params, 'params')
    const body = parseInput(incrementBody, request.body ?? {}, 'body')
    const { store: target } = await writer.write(shard, [{ op: 'increment', counter, by: body.by }], epochOf(request))
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
    const { store: target } = await writer.write(shard, body.ops as WriteOp[], epochOf(request))
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
