/**
 * `/metagrid/sync/2.0.0`: push-pull anti-entropy for one shard over a direct
 * stream. Gossip carries each batch once; this repairs whatever a replica
 * missed (a partition, a restart, a dropped message).
 *
 * Frames are length-prefixed; the first byte says what follows:
 *   1 HELLO     shard id (string), flags (1: send a snapshot rather than batches), the asker's causal context
 *   2 CONTEXT   the answerer's causal context
 *   3 DELTA     one origin-signed batch, as its origin sealed it (storage/crdt/batch.ts)
 *   5 SNAPSHOT  n, n × frontier proof, then a whole-state snapshot patch
 *   4 END       no more from this side
 * A context travels as an empty snapshot patch (the patch codec already
 * encodes contexts compactly).
 *
 *   asker                            answerer
 *   HELLO(shard, flags, ctx A)  ───▶
 *                               ◀───  CONTEXT(ctx B), DELTA* or SNAPSHOT (what A lacks), END
 *   DELTA* or SNAPSHOT (what B lacks), END ───▶
 *
 * What a side lacks is sent as the logged signed batches that hold it, or as
 * a snapshot of just the entries it lacks, with the frontier proofs of their
 * origins, when the log no longer holds them (compacted) or they are many.
 * A snapshot never removes anything, so the removal batches the log keeps
 * through compaction go first. Every frame received goes through the admission layer, the
 * same one gossip uses. A session has a deadline, a frame size cap and a
 * byte budget.
 */
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import { CodecError, Decoder, Encoder } from '../../storage/crdt/codec.ts'
import { DotContext } from '../../storage/crdt/dots.ts'
import { decodePatch, encodePatch } from '../../storage/crdt/patch-codec.ts'
import { WireProtocolError } from '../wire-error.ts'
import type { LogIndexEntry, ShardStore } from '../../storage/shard-store.ts'

export const FRAME_HELLO = 1
export const FRAME_CONTEXT = 2
export const FRAME_DELTA = 3
export const FRAME_END = 4
export const FRAME_SNAPSHOT = 5

/** HELLO flag: the asker could not verify some batches (an epoch it does not know) and wants a snapshot instead. */
export const WANT_SNAPSHOT = 1

export interface SyncLimits {
  /** Largest frame (a snapshot is one frame). */
  maxFrameBytes: number
  /** Bytes one side may receive in one session. */
  maxSessionBytes: number
  /** A gap larger than this many operations is sent as a snapshot rather than batches. */
  snapshotAfterOps: number
  /** Frontier proofs a snapshot may carry; one per origin in it. */
  maxProofs: number
  timeoutMs: number
}

export const defaultSyncLimits: SyncLimits = {
  maxFrameBytes: 16 * 1024 * 1024,
  maxSessionBytes: 64 * 1024 * 1024,
  snapshotAfterOps: 20_000,
  maxProofs: 100_000,
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

export function encodeHello (shard: string, flags: number, context: DotContext): Uint8Array {
  const body = encodeContext(context)
  const e = new Encoder(body.length + 80)
  e.writeByte(FRAME_HELLO)
  e.writeString(shard)
  e.writeByte(flags)
  e.writeBytesRaw(body)
  return e.finish()
}

export function encodeFrame (type: number, body: Uint8Array): Uint8Array {
  const frame = new Uint8Array(body.length + 1)
  frame[0] = type
  frame.set(body, 1)
  return frame
}

export function encodeSnapshotFrame (proofs: readonly Uint8Array[], patchBytes: Uint8Array): Uint8Array {
  const e = new Encoder(patchBytes.length + proofs.length * 200 + 16)
  e.writeByte(FRAME_SNAPSHOT)
  e.writeVarUint(proofs.length)
  for (const proof of proofs) e.writeBytes(proof)
  e.writeBytesRaw(patchBytes)
  return e.finish()
}

/** Operations `mine` has that `theirs` lacks, counting up to `limit` (then it stops); see DotContext.missingFrom. */
export function countMissing (mine: DotContext, theirs: DotContext, limit: number): number {
  return mine.missingFrom(theirs, limit)
}

export interface Plan {
  /** Entries of our state the peer lacks. */
  missing: number
  /** Frames ready to send: DELTA frames, and at most one SNAPSHOT frame, last. */
  frames: Uint8Array[]
  snapshot: boolean
}

/**
 * What to send a peer whose context is `theirs`: the removal batches it
 * lacks (the log keeps them through compaction; a snapshot never removes),
 * then either the logged signed batches that hold every entry of our state it
 * lacks, or, when the log no longer holds some (compacted) or they are many,
 * a snapshot of just those entries with the frontier proofs of their origins.
 * What a peer lacks is counted in entries, not dots: writes overwritten
 * before it saw them are nothing it needs.
 */
export async function planFor (store: ShardStore, theirs: DotContext, limits: SyncLimits, wantSnapshot = false): Promise<Plan> {
  // Written first, so the log index holds everything the state holds.
  await store.commit()
  const lacking = store.doc.stateFor(theirs)
  const missing = lacking.components.length + lacking.adds.length + lacking.counters.length
  const frames: Uint8Array[] = []
  const sent = new Set<number>()
  const send = async (position: number): Promise<boolean> => {
    if (sent.has(position)) return true
    const bytes = await store.readRecord(position)
    if (bytes == null) return false // compacted meanwhile
    sent.add(position)
    frames.push(encodeFrame(FRAME_DELTA, bytes))
    return true
  }
  const index = store.logIndex()
  for (const entry of index) {
    if (entry.removes && !theirs.hasRange(entry.origin, entry.from, entry.to)) await send(entry.position)
  }
  if (missing === 0) return { missing, frames, snapshot: false }
  const snapshot = (): Plan => {
    const origins = new Set(lacking.context.replicas())
    const proofs = store.proofs().filter((proof) => origins.has(proof.origin)).map((proof) => proof.bytes)
    frames.push(encodeSnapshotFrame(proofs, encodePatch(lacking)))
    return { missing, frames, snapshot: true }
  }
  if (wantSnapshot || missing > limits.snapshotAfterOps) return snapshot()
  // Every entry they lack must be in a logged signed batch; otherwise only a snapshot has it.
  const byOrigin = new Map<string, LogIndexEntry[]>()
  for (const entry of index) {
    if (!entry.signed) continue
    const list = byOrigin.get(entry.origin) ?? []
    list.push(entry)
    byOrigin.set(entry.origin, list)
  }
  // Batches of one origin arrive in any order; binary search needs them by dot.
  for (const list of byOrigin.values()) list.sort((a, b) => a.from - b.from)
  for (const replica of lacking.context.replicas()) {
    const batches = byOrigin.get(replica) ?? []
    for (const [from, to] of lacking.context.rangesOf(replica)) {
      for (let seq = from; seq <= to; seq++) {
        const holder = batchHolding(batches, seq)
        if (holder == null || !(await send(holder.position))) return snapshot()
        seq = holder.to
      }
    }
  }
  return { missing, frames, snapshot: false }
}

/** The logged batch of one origin (sorted by dot; their ranges are disjoint) whose range holds `seq`. */
function batchHolding (batches: readonly LogIndexEntry[], seq: number): LogIndexEntry | undefined {
  let low = 0
  let high = batches.length
  while (low < high) {
    const mid = (low + high) >>> 1
    if (batches[mid]!.to < seq) low = mid + 1
    else high = mid
  }
  const batch = batches[low]
  return batch != null && batch.from <= seq ? batch : undefined
}

export interface SessionStats {
  sentPatches: number
  sentBytes: number
  receivedPatches: number
  receivedBytes: number
  /** Frames the admission layer ignored (an epoch not known here yet, a duplicate). */
  ignored: number
  /** Entries of our state the peer lacked, and entries we received. */
  theyLacked: number
  weLacked: number
}

export function emptyStats (): SessionStats {
  return { sentPatches: 0, sentBytes: 0, receivedPatches: 0, receivedBytes: 0, ignored: 0, theyLacked: 0, weLacked: 0 }
}

/** Sends our frames for `theirs`, then END. */
export async function sendPlan (lp: LengthPrefixedStream, store: ShardStore, theirs: DotContext, limits: SyncLimits, stats: SessionStats, signal: AbortSignal, wantSnapshot = false): Promise<void> {
  const plan = await planFor(store, theirs, limits, wantSnapshot)
  stats.theyLacked = plan.missing
  for (const frame of plan.frames) {
    if (frame.byteLength > limits.maxFrameBytes) throw new SyncProtocolError('TOO_LARGE', `a frame of ${frame.byteLength} bytes exceeds the ${limits.maxFrameBytes} byte frame limit`)
    await lp.write(frame, { signal })
    stats.sentPatches++
    stats.sentBytes += frame.byteLength
  }
  await lp.write(Uint8Array.of(FRAME_END), { signal })
}

export interface PatchHandlers {
  batch: (bytes: Uint8Array) => Promise<void>
  snapshot: (proofs: Uint8Array[], patchBytes: Uint8Array) => Promise<void>
}

/** Reads DELTA and SNAPSHOT frames until END, handing each on; garbage throws SyncProtocolError. */
export async function receivePatches (lp: LengthPrefixedStream, handlers: PatchHandlers, limits: SyncLimits, stats: SessionStats, signal: AbortSignal): Promise<void> {
  for (;;) {
    const frame = (await lp.read({ signal })).subarray()
    stats.receivedBytes += frame.byteLength
    if (stats.receivedBytes > limits.maxSessionBytes) throw new SyncProtocolError('BUDGET', `peer sent more than ${limits.maxSessionBytes} bytes in one session`)
    if (frame[0] === FRAME_END && frame.length === 1) return
    if (frame[0] === FRAME_DELTA) {
      await handlers.batch(frame.subarray(1))
    } else if (frame[0] === FRAME_SNAPSHOT) {
      const { proofs, patchBytes } = readSnapshotFrame(frame, limits)
      await handlers.snapshot(proofs, patchBytes)
    } else {
      throw new SyncProtocolError('UNEXPECTED_FRAME', `expected DELTA, SNAPSHOT or END, got frame type ${frame[0]}`)
    }
    stats.receivedPatches++
  }
}

function readSnapshotFrame (frame: Uint8Array, limits: SyncLimits): { proofs: Uint8Array[], patchBytes: Uint8Array } {
  try {
    const d = new Decoder(frame)
    d.readByte()
    const count = d.readLength(2)
    if (count > limits.maxProofs) throw new SyncProtocolError('TOO_LARGE', `a snapshot with ${count} proofs; at most ${limits.maxProofs}`)
    const proofs: Uint8Array[] = []
    for (let i = 0; i < count; i++) proofs.push(d.readBytes())
    return { proofs, patchBytes: d.readRest() }
  } catch (err) {
    if (err instanceof SyncProtocolError) throw err
    throw new SyncProtocolError('MALFORMED', `SNAPSHOT does not decode: ${(err as Error).message}`)
  }
}

export function readHello (frame: Uint8Array): { shard: string, flags: number, context: DotContext } {
  try {
    const d = new Decoder(frame)
    if (d.readByte() !== FRAME_HELLO) throw new SyncProtocolError('UNEXPECTED_FRAME', 'expected HELLO')
    const shard = d.readString()
    if (shard.length === 0 || shard.length > 64) throw new SyncProtocolError('MALFORMED', 'a shard id is 1 to 64 characters')
    const flags = d.readByte()
    if (flags > WANT_SNAPSHOT) throw new SyncProtocolError('MALFORMED', `unknown HELLO flags ${flags}`)
    return { shard, flags, context: decodeContext(d.readRest()) }
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
