/**
 * Moving an entity across a shard border, never lost and never duplicated:
 * two-phase commit with presumed abort, coordinated by the source shard's
 * host, over `/metagrid/handoff/1.0.0`.
 *
 * 1. The source records the intent (`~handoff.<id>` = preparing) in the source shard.
 * 2. PREPARE: the target shard's host stores the entity as `~pending.<id>` in
 *    the target shard (durable, replicated) and says yes.
 * 3. Commit point: in one atomic delta the source deletes the entity and
 *    marks `~handoff.<id>` committed. If PREPARE failed or timed out it marks
 *    the transfer aborted instead (the compensating action) and the entity
 *    stays where it was.
 * 4. COMMIT: the target turns `~pending.<id>` into the live entity, in one delta.
 *
 * A target that misses step 4 (it died, or its lease moved to a replica,
 * which has the pending record through the CRDT layer) finds its pending
 * records on a later round and asks the source for the OUTCOME: committed
 * finishes it, aborted drops it. A source asked about a transfer it never
 * committed marks it aborted before answering (after `abandonAfterMs`), so a
 * late PREPARE that lands after the source gave up is dropped, never applied.
 *
 * Who may ask what (the admission rules of this protocol): PREPARE and COMMIT
 * come from the source shard's lease holder, as this node's lease table
 * shows it, and only to the target shard's holder; what PREPARE carries must
 * be an entity the document would take (names, depth, and the whole entity
 * within `maxValueBytes`). OUTCOME is answered only by the source's holder.
 * Refusals are counted in `metagrid_admission_rejected_total{path="handoff"}`.
 */
import { randomBytes } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { HANDOFF_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import { answerRequests, requestOnce } from '../request.ts'
import { checkComponents, checkValue, MAX_NAME_LENGTH, ShardDocError } from '../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../storage/crdt/codec.ts'
import type { ShardStore } from '../../storage/shard-store.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Replication } from '../sync/replication.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

const MAX_FRAME_BYTES = 1024 * 1024
const MAX_STREAMS = 16
const REQUEST_TIMEOUT_MS = 3_000
const HANDOFF_PREFIX = '~handoff.'
const PENDING_PREFIX = '~pending.'

export class HandoffProtocolError extends WireProtocolError {
  static override name = 'HandoffProtocolError'
  override name = 'HandoffProtocolError'
}

export class EntityHandoffError extends Error {
  static override name = 'EntityHandoffError'
  override name = 'EntityHandoffError'
  readonly code: 'UNKNOWN_ENTITY' | 'SAME_SHARD' | 'UNKNOWN_TARGET' | 'HANDOFF_ABORTED'
  constructor (code: EntityHandoffError['code'], message: string) {
    super(message)
    this.code = code
  }
}

type Request =
  | { t: 'prepare', id: string, from: string, to: string, entity: string, components: string }
  | { t: 'commit', id: string, to: string }
  | { t: 'outcome', id: string, from: string }

type Outcome = 'committed' | 'aborted' | 'pending'

export interface HandoffResult {
  id: string
  entity: string
  from: string
  to: string
  /** committed: the source let go; delivered: the target has it live (else its host finishes it on its next round). */
  state: 'committed'
  delivered: boolean
}

export interface EntityHandoffComponents {
  libp2p: MetagridLibp2p
  replication: Replication
  /** The node that takes writes for a shard now (its lease holder), if any. */
  hostOf: (shard: string) => string | null
  /** Throws if this node may not write to the shard (not its host). */
  guardWrite: (shard: string) => void
  /** Largest encoded size of one component value: a pending transfer holds the whole entity in one. */
  maxValueBytes: number
  metrics: P2pMetrics | null
  logger: Logger
}

export interface EntityHandoffOptions {
  /** A transfer still preparing after this long is presumed aborted. */
  abandonAfterMs: number
}

const isId = (value: unknown): value is string => typeof value === 'string' && /^[0-9a-f]{32}$/.test(value)
const isName = (value: unknown, max = 256): value is string => typeof value === 'string' && value.length > 0 && value.length <= max

function decodeRequest (bytes: Uint8Array): Request {
  const value = decodeWire(bytes, () => new HandoffProtocolError('MALFORMED', 'not DAG-CBOR'))
  const r = (value ?? {}) as Record<string, unknown>
  const keys = Object.keys(r).sort().join(',')
  if (r.t === 'prepare' && keys === 'components,entity,from,id,t,to' && isId(r.id) && isName(r.from, 64) && isName(r.to, 64) && isName(r.entity, MAX_NAME_LENGTH) && typeof r.components === 'string') return r as Request
  if (r.t === 'commit' && keys === 'id,t,to' && isId(r.id) && isName(r.to, 64)) return r as Request
  if (r.t === 'outcome' && keys === 'from,id,t' && isId(r.id) && isName(r.from, 64)) return r as Request
  throw new HandoffProtocolError('MALFORMED', 'request fields missing or mistyped')
}

export class EntityHandoff {
  private readonly components: EntityHandoffComponents
  private readonly options: EntityHandoffOptions
  private readonly log: Logger
  private readonly inFlight = new Set<string>()

  constructor (components: EntityHandoffComponents, options: EntityHandoffOptions) {
    this.components = components
    this.options = options
    this.log = components.logger.child({ component: 'metagrid:handoff' })
  }

  async start (): Promise<void> {
    const { libp2p, metrics } = this.components
    await answerRequests(libp2p, HANDOFF_PROTOCOL, { name: 'handoff', timeoutMs: REQUEST_TIMEOUT_MS * 2, maxFrameBytes: MAX_FRAME_BYTES, maxStreams: MAX_STREAMS, metrics, log: this.log }, async (bytes, peer) => {
      return dagCbor.encode(await this.answer(decodeRequest(bytes), peer.toString()))
    })
  }

  async stop (): Promise<void> {
    await this.components.libp2p.unhandle(HANDOFF_PROTOCOL).catch(() => {})
  }

  /** Moves `entity` from shard `from` (which this node hosts) to shard `to`. */
  async transfer (from: string, entity: string, to: string): Promise<HandoffResult> {
    if (from === to) throw new EntityHandoffError('SAME_SHARD', 'source and target shard are the same')
    const source = this.components.replication.shard(from)
    const view = source.doc.entity(entity)
    if (view == null) throw new EntityHandoffError('UNKNOWN_ENTITY', `shard ${from} has no entity ${entity}`)
    const target = this.components.hostOf(to)
    if (target == null) throw new EntityHandoffError('UNKNOWN_TARGET', `shard ${to} has no host right now`)
    const id = randomBytes(16).toString('hex')
    source.doc.setComponent(`${HANDOFF_PREFIX}${id}`, 'state', { state: 'preparing', entity, to, at: Date.now() })
    await source.commit()
    this.inFlight.add(id)
    try {
      const components = JSON.stringify(view.components)
      const prepared = await this.request(target, { t: 'prepare', id, from, to, entity, components })
      // Between the PREPARE and here the source could have lost its lease; the commit must still be ours to make.
      this.components.guardWrite(from)
      if (prepared?.ok !== true || source.doc.entity(entity) == null) {
        await this.abort(source, id, entity, to)
        throw new EntityHandoffError('HANDOFF_ABORTED', `target ${to} did not prepare (${String(prepared?.code ?? 'unreachable')}); ${entity} stays in ${from}`)
      }
      source.doc.deleteEntity(entity)
      source.doc.setComponent(`${HANDOFF_PREFIX}${id}`, 'state', { state: 'committed', entity, to, at: Date.now() })
      await source.commit()
    } finally {
      this.inFlight.delete(id)
    }
    this.components.metrics?.entityHandoffs.inc({ result: 'committed' })
    const delivered = (await this.request(target, { t: 'commit', id, to }))?.ok === true
    this.log.info({ code: 'ENTITY_HANDOFF', id, entity, from, to, delivered }, 'entity handed off')
    return { id, entity, from, to, state: 'committed', delivered }
  }

  private async abort (source: ShardStore, id: string, entity: string, to: string): Promise<void> {
    source.doc.setComponent(`${HANDOFF_PREFIX}${id}`, 'state', { state: 'aborted', entity, to, at: Date.now() })
    await source.commit()
    this.components.metrics?.entityHandoffs.inc({ result: 'aborted' })
  }

  private async request (peer: string, request: Request): Promise<Record<string, unknown> | null> {
    const self = this.components.libp2p.peerId.toString()
    if (peer === self) return this.answer(request, self)
    try {
      const answer = dagCbor.decode(await requestOnce(this.components.libp2p, peerIdFromString(peer), HANDOFF_PROTOCOL, dagCbor.encode(request), { timeoutMs: REQUEST_TIMEOUT_MS, maxFrameBytes: MAX_FRAME_BYTES }))
      return answer != null && typeof answer === 'object' ? answer as Record<string, unknown> : null
    } catch (err) {
      this.log.debug({ code: wireErrorCode(err), peer, t: request.t, err }, 'handoff request failed')
      return null
    }
  }

  /** A refusal of a request, counted under a bounded code. */
  private refuse (code: string): Record<string, unknown> {
    this.components.metrics?.admissionRejected.inc({ path: 'handoff', reason: code, action: 'ignore' })
    return { ok: false, code }
  }

  private async answer (request: Request, sender: string): Promise<Record<string, unknown>> {
    const { replication } = this.components
    if (request.t === 'outcome') {
      // Only the source's holder speaks for the source (and may mark a stale transfer aborted in it).
      try {
        this.components.guardWrite(request.from)
      } catch {
        return this.refuse('NOT_HOST')
      }
      return { ok: true, outcome: await this.outcome(replication.shard(request.from), request.id) }
    }
    const shard = request.to
    try {
      this.components.guardWrite(shard)
    } catch {
      return this.refuse('NOT_HOST')
    }
    const target = await replication.ensure(shard)
    if (request.t === 'prepare') {
      if (this.components.hostOf(request.from) !== sender) return this.refuse('NOT_SOURCE_HOST')
      let components: Record<string, JsonValue>
      try {
        components = JSON.parse(request.components) as Record<string, JsonValue>
        checkComponents(request.entity, components, this.components.maxValueBytes)
        // The pending record holds the whole entity in one value, under the same limit as any value.
        checkValue(components, `entity ${request.entity}`, this.components.maxValueBytes)
      } catch (err) {
        if (err instanceof SyntaxError || err instanceof ShardDocError) return this.refuse('BAD_ENTITY')
        throw err
      }
      target.doc.setComponent(`${PENDING_PREFIX}${request.id}`, 'transfer', { entity: request.entity, from: request.from, components, at: Date.now() })
      await target.commit()
      return { ok: true }
    }
    const pending = target.doc.entity(`${PENDING_PREFIX}${request.id}`)?.components.transfer as { from?: string } | undefined
    if (pending != null && (pending.from == null || this.components.hostOf(pending.from) !== sender)) return this.refuse('NOT_SOURCE_HOST')
    return { ok: await this.finish(target, request.id, 'committed') }
  }

  /** What became of a transfer this node coordinated; a stale one still preparing is presumed aborted, and marked so. */
  private async outcome (source: ShardStore, id: string): Promise<Outcome> {
    const record = source.doc.entity(`${HANDOFF_PREFIX}${id}`)?.components.state as { state?: string, entity?: string, to?: string, at?: number } | undefined
    if (record?.state === 'committed') return 'committed'
    if (record?.state === 'aborted') return 'aborted'
    if (record == null) return 'aborted'
    if (this.inFlight.has(id) || Date.now() - (record.at ?? 0) < this.options.abandonAfterMs) return 'pending'
    await this.abort(source, id, record.entity ?? '', record.to ?? '')
    return 'aborted'
  }

  /** Turns a pending transfer into the live entity (committed) or drops it (aborted). */
  private async finish (target: ShardStore, id: string, outcome: 'committed' | 'aborted'): Promise<boolean> {
    const pending = target.doc.entity(`${PENDING_PREFIX}${id}`)?.components.transfer as { entity?: string, components?: Record<string, JsonValue> } | undefined
    // Already settled (the resolver or an earlier COMMIT got here first).
    if (pending == null) return true
    if (outcome === 'committed' && pending.entity != null && pending.components != null) target.doc.putEntity(pending.entity, pending.components)
    target.doc.deleteEntity(`${PENDING_PREFIX}${id}`)
    await target.commit()
    this.components.metrics?.entityHandoffs.inc({ result: outcome === 'committed' ? 'resolved_committed' : 'resolved_aborted' })
    return true
  }

  /**
   * For each shard this node hosts, settles pending transfers older than
   * `minAgeMs` by asking their source. Run by placement each round.
   */
  async resolve (shards: Iterable<string>, minAgeMs = REQUEST_TIMEOUT_MS): Promise<void> {
    const now = Date.now()
    for (const shard of shards) {
      let target: ShardStore
      try {
        target = this.components.replication.shard(shard)
      } catch {
        continue
      }
      for (const entity of target.doc.entityIds()) {
        if (!entity.startsWith(PENDING_PREFIX)) continue
        const id = entity.slice(PENDING_PREFIX.length)
        const pending = target.doc.entity(entity)?.components.transfer as { from?: string, at?: number } | undefined
        if (!isId(id) || pending?.from == null || now - (pending.at ?? 0) < minAgeMs) continue
        const host = this.components.hostOf(pending.from)
        if (host == null) continue
        const answer = await this.request(host, { t: 'outcome', id, from: pending.from })
        const outcome = answer?.outcome
        if (outcome === 'committed' || outcome === 'aborted') {
          await this.finish(target, id, outcome)
          this.log.info({ code: 'HANDOFF_RESOLVED', id, shard, outcome }, 'settled a pending entity transfer')
        }
      }
    }
  }
}
