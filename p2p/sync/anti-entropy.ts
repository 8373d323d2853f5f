/**
 * `/metagrid/sync/1.0.0`: push-pull anti-entropy for one shard over a direct
 * stream. Gossip carries each delta once; this repairs whatever a replica
 * missed (a partition, a restart, a dropped message).
 *
 * Frames are length-prefixed; the first byte says what follows:
 *   1 HELLO    shard id (string), then the asker's causal context
 *   2 CONTEXT  the answerer's causal context
 *   3 PATCH    one patch (a logged delta, or a whole snapshot)
 *   4 END      no more patches from this side
 * A context travels as an empty snapshot patch (the patch codec already
 * encodes contexts compactly).
 *
 *   asker                         answerer
 *   HELLO(shard, ctx A)   ─────▶
 *                         ◀─────  CONTEXT(ctx B), PATCH* (what A lacks), END
 *   PATCH* (what B lacks), END ─▶
 *
 * What a side lacks is sent as the logged deltas that cover it, or as a
 * snapshot when the log no longer holds them (compacted) or the gap is large.
 * A session has a deadline, a frame size cap and a byte budget; a peer whose
 * frames do not decode is disconnected and counted.
 */
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import { CodecError, Decoder, Encoder } from '../../storage/crdt/codec.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { decodePatch, encodePatch } from '../../storage/crdt/patch-codec.ts'
import { WireProtocolError } from '../wire-error.ts'
import type { Patch } from '../../storage/crdt/shard-doc.ts'
import type { ShardStore } from '../../storage/shard-store.ts'

export const FRAME_HELLO = 1
export const FRAME_CONTEXT = 2
export const FRAME_PATCH = 3
export const FRAME_END = 4

export interface SyncLimits {
  /** Largest frame (a snapshot is one frame). */
  maxFrameBytes: number
  /** Bytes one side may receive in one session. */
  maxSessionBytes: number
  /** A gap larger than this many operations is sent as a snapshot rather than deltas. */
  snapshotAfterOps: number
  timeoutMs: number
}

export const defaultSyncLimits: SyncLimits = {
  maxFrameBytes: 16 * 1024 * 1024,
  maxSessionBytes: 64 * 1024 * 1024,
  snapshotAfterOps: 20_000,
  timeoutMs: 60_000
}

export class SyncProtocolError extends WireProtocolError {
  static override name = 'SyncProtocolError'
  override name = 'SyncProtocolError'
}

export function encodeContext (context: DotContext): Uint8Array {
  return encodePatch({ kind: 'snapshot', components: [], adds: [], removes: [], counters: [], context })
}

export function decodeContext (bytes: Uint8Array): DotContext {
  const patch = decodePatch(bytes)
  if (patch.kind !== 'snapshot' || patch.components.length + patch.adds.length + patch.counters.length > 0) {
    throw new CodecError('a context frame carries state')
  }
  return patch.context
}

export function encodeFrame (type: number, body: Uint8Array, shard?: string): Uint8Array {
  const e = new Encoder(body.length + 80)
  e.writeByte(type)
  if (shard != null) e.writeString(shard)
  e.writeBytesRaw(body)
  return e.finish()
}

/** Operations `mine` has that `theirs` lacks, counting up to `limit` (then it stops); see DotContext.missingFrom. */
export function countMissing (mine: DotContext, theirs: DotContext, limit: number): number {
  return mine.missingFrom(theirs, limit)
}

/**
 * What to send a peer whose context is `theirs`: the logged deltas that
 * together cover every operation it lacks, or a snapshot when they do not
 * (or the gap is large). Empty when it lacks nothing.
 */
export async function planFor (store: ShardStore, theirs: DotContext, limits: SyncLimits): Promise<{ missing: number, patches: Uint8Array[], snapshot: boolean }> {
  // Written first, so the log index holds everything the context says we have.
  await store.commit()
  const mine = store.doc.context
  const missing = countMissing(mine, theirs, limits.snapshotAfterOps)
  if (missing === 0) return { missing, patches: [], snapshot: false }
  const snapshot = async (): Promise<{ missing: number, patches: Uint8Array[], snapshot: boolean }> =>
    ({ missing, patches: [encodePatch(store.doc.snapshot())], snapshot: true })
  if (missing > limits.snapshotAfterOps) return snapshot()

  const selected = store.logIndex().filter((entry) => entry.kind === 'delta' && !theirs.hasRange(entry.origin, entry.from, entry.to))
  // Every operation they lack must be in a selected delta's range; otherwise only a snapshot has it.
  const reach = theirs.clone()
  for (const entry of selected) reach.addRange(entry.origin, entry.from, entry.to)
  if (!reach.covers(mine)) return snapshot()
  const patches: Uint8Array[] = []
  for (const entry of selected) {
    const bytes = await store.readRecord(entry.position)
    if (bytes == null) return snapshot() // compacted meanwhile
    patches.push(bytes)
  }
  return { missing, patches, snapshot: false }
}

export interface SessionStats {
  sentPatches: number
  sentBytes: number
  receivedPatches: number
  receivedBytes: number
  /** Operations we had that the peer lacked, and the other way round. */
  theyLacked: number
  weLacked: number
}

/** Sends our patches for `theirs`, then END. */
export async function sendPlan (lp: LengthPrefixedStream, store: ShardStore, theirs: DotContext, limits: SyncLimits, stats: SessionStats, signal: AbortSignal): Promise<void> {
  const plan = await planFor(store, theirs, limits)
  stats.theyLacked = plan.missing
  for (const patch of plan.patches) {
    if (patch.byteLength + 1 > limits.maxFrameBytes) throw new SyncProtocolError('TOO_LARGE', `a patch of ${patch.byteLength} bytes exceeds the ${limits.maxFrameBytes} byte frame limit`)
    await lp.write(encodeFrame(FRAME_PATCH, patch), { signal })
    stats.sentPatches++
    stats.sentBytes += patch.byteLength
  }
  await lp.write(Uint8Array.of(FRAME_END), { signal })
}

/** Reads PATCH frames until END, applying each; garbage throws SyncProtocolError. */
export async function receivePatches (lp: LengthPrefixedStream, apply: (patch: Patch, bytes: Uint8Array) => Promise<void>, limits: SyncLimits, stats: SessionStats, signal: AbortSignal): Promise<void> {
  for (;;) {
    const frame = (await lp.read({ signal })).subarray()
    stats.receivedBytes += frame.byteLength
    if (stats.receivedBytes > limits.maxSessionBytes) throw new SyncProtocolError('BUDGET', `peer sent more than ${limits.maxSessionBytes} bytes in one session`)
    if (frame[0] === FRAME_END && frame.length === 1) return
    if (frame[0] !== FRAME_PATCH) throw new SyncProtocolError('UNEXPECTED_FRAME', `expected PATCH or END, got frame type ${frame[0]}`)
    const bytes = frame.subarray(1)
    let patch: Patch
    try {
      patch = decodePatch(bytes)
    } catch (err) {
      throw new SyncProtocolError('MALFORMED', `patch does not decode: ${(err as Error).message}`)
    }
    await apply(patch, bytes)
    stats.receivedPatches++
  }
}

export function readHello (frame: Uint8Array): { shard: string, context: DotContext } {
  try {
    const d = new Decoder(frame)
    if (d.readByte() !== FRAME_HELLO) throw new SyncProtocolError('UNEXPECTED_FRAME', 'expected HELLO')
    const shard = d.readString()
    return { shard, context: decodeContext(d.readRest()) }
  } catch (err) {
    if (err instanceof SyncProtocolError) throw err
    throw new SyncProtocolError('MALFORMED', `HELLO does not decode: ${(err as Error).message}`)
  }
}

export function readContext (frame: Uint8Array): DotContext | null {
  if (frame[0] === FRAME_END && frame.length === 1) return null // the peer does not replicate this shard
  if (frame[0] !== FRAME_CONTEXT) throw new SyncProtocolError('UNEXPECTED_FRAME', `expected CONTEXT, got frame type ${frame[0]}`)
  try {
    return decodeContext(frame.subarray(1))
  } catch (err) {
    throw new SyncProtocolError('MALFORMED', `CONTEXT does not decode: ${(err as Error).message}`)
  }
}

export function framedStream (stream: Parameters<typeof lpStream>[0], limits: SyncLimits): LengthPrefixedStream {
  return lpStream(stream, { maxDataLength: limits.maxFrameBytes })
}
