/**
 * A world client's input applied at the shard's host: the same function for
 * an input from a session on this node and one a peer relayed.
 *
 * Exactly once, across reconnects, relays and failovers: every entity a
 * client writes through a session carries an input mark (`_in`: the client
 * and the input's sequence number) in the same delta as the write. An input
 * whose client already wrote this entity with a sequence number as high or
 * higher is a duplicate (sent again after a lost ack) or superseded (a later
 * input of the same client overtook it): it is acknowledged, once what
 * this node has of the shard meets the layer's write concern, and not
 * applied again. The mark replicates with the entity, so the next host after
 * a failover knows it too: under the majority write concern every
 * acknowledged input is on a majority of the voters the new host took its
 * state from.
 */
import { INPUT_COMPONENT } from '../../client/protocol.ts'
import { ApiError } from '../api/errors.ts'
import type { ForwardedInput, InputAnswer } from '../../p2p/session/forward.ts'
import type { ShardWriter } from './writes.ts'

/** Refusals a later try may get past: the lease moved or is moving, the voters were slow, load was shed. */
const RETRYABLE = new Set(['NOT_HOST', 'NOT_REPLICA', 'STALE_EPOCH', 'HANDOFF_IN_PROGRESS', 'WRITE_NOT_REPLICATED', 'SHED_LOAD', 'HOST_UNREACHABLE', 'NO_HOST', 'UNKNOWN_SHARD'])

export function inputMark (value: unknown): { c: string, s: number } | null {
  if (value == null || typeof value !== 'object' || Array.isArray(value)) return null
  const { c, s } = value as Record<string, unknown>
  return typeof c === 'string' && Number.isSafeInteger(s) ? { c, s: s as number } : null
}

/** The input's outcome as an answer; an error becomes a refusal with a bounded code. */
export async function applyInput (writer: ShardWriter, input: ForwardedInput): Promise<InputAnswer> {
  // Transfer records (~handoff., ~pending.) belong to the handoff protocol: no input names one.
  if (input.entity.startsWith('~')) return { ok: false, code: 'RESERVED_ENTITY', message: 'entity ids starting with ~ are the node\'s own', retry: false }
  try {
    const store = writer.store(input.shard)
    writer.guard(input.shard, undefined)
    const mark = inputMark(store.doc.entity(input.entity)?.components[INPUT_COMPONENT])
    // Checked and written in one turn of the event loop: no other input of this entity comes between.
    if (mark != null && mark.c === input.client && mark.s >= input.seq) {
      await writer.durable(input.shard)
      return { ok: true, dup: true }
    }
    if (input.op === 'delete') await writer.write(input.shard, [{ op: 'delete', entity: input.entity }])
    else await writer.write(input.shard, [{ op: 'put', entity: input.entity, components: { ...input.components, [INPUT_COMPONENT]: { c: input.client, s: input.seq } } }])
    return { ok: true, dup: false }
  } catch (err) {
    return refusal(err)
  }
}

export function refusal (err: unknown): InputAnswer & { ok: false } {
  if (err instanceof ApiError) return { ok: false, code: err.code, message: err.message, retry: RETRYABLE.has(err.code) }
  return { ok: false, code: 'INTERNAL', message: (err as Error).message, retry: true }
}
