/**
 * Inputs of world sessions carried to the shard's host, over
 * `/metagrid/input/2.0.0`: the inputs bound for one host within one turn of
 * the event loop go as one request (`{ b: [input, ...] }`, each input its own
 * DAG-CBOR bytes), answered with their outcomes in order
 * (`{ b: [answer, ...] }`), many requests at once on one long-lived stream
 * per host (p2p/channel.ts). At a few thousand inputs a second, one message
 * per input each way was most of a relaying node's CPU. The node a client
 * is connected to relays; the host applies each input through the same
 * write path as its own clients' inputs (the `apply` it is given), after
 * checking that the relaying peer may relay at all. This file only carries and checks the shape of what it carries:
 * every field is bounded before `apply` sees it.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { INPUT_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import { answerChannel, RequestChannel } from '../channel.ts'
import { MAX_NAME_LENGTH } from '../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../storage/crdt/codec.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { PeerId } from '@libp2p/interface'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

/** An entity of 256 KiB plus the envelope: a session frame's own bound. */
const MAX_INPUT_BYTES = 320 * 1024
/** A request: the inputs of one turn, up to this many bytes and this many inputs (one input alone may be its own bound). */
const MAX_FRAME_BYTES = 1024 * 1024
const MAX_BATCH = 256
/** Channel streams per connection: one each way, and one being replaced. */
const MAX_STREAMS = 4
/** Inputs in flight to one host, and answered at once by a host for one relaying node. */
const MAX_IN_FLIGHT = 1024
const REQUEST_TIMEOUT_MS = 3_000

export interface ForwardedInput {
  shard: string
  op: 'put' | 'delete'
  entity: string
  /** put: the whole entity (its position and input mark included). */
  components?: Record<string, JsonValue>
  client: string
  seq: number
}

export type InputAnswer =
  | { ok: true, dup: boolean }
  | { ok: false, code: string, message: string, retry: boolean }

export class InputProtocolError extends WireProtocolError {
  static override name = 'InputProtocolError'
  override name = 'InputProtocolError'
}

const isName = (value: unknown, max: number): value is string => typeof value === 'string' && value.length > 0 && value.length <= max

/** A request: the inputs it carries, each checked as `decodeInput` does. */
export function decodeInputs (bytes: Uint8Array): ForwardedInput[] {
  const value = decodeWire(bytes, () => new InputProtocolError('MALFORMED', 'not DAG-CBOR')) as Record<string, unknown> | null
  const list = value?.b
  if (value == null || typeof value !== 'object' || Object.keys(value).length !== 1 || !Array.isArray(list) || list.length === 0 || list.length > MAX_BATCH || !list.every((x) => x instanceof Uint8Array && x.byteLength <= MAX_INPUT_BYTES)) {
    throw new InputProtocolError('MALFORMED', `a request is { b: [1 to ${MAX_BATCH} inputs] }`)
  }
  return (list as Uint8Array[]).map(decodeInput)
}

export function decodeInput (bytes: Uint8Array): ForwardedInput {
  const value = decodeWire(bytes, () => new InputProtocolError('MALFORMED', 'not DAG-CBOR'))
  if (value == null || typeof value !== 'object' || Array.isArray(value)) throw new InputProtocolError('MALFORMED', 'an input is a map')
  const r = value as Record<string, unknown>
  const keys = Object.keys(r).sort().join(',')
  const common = isName(r.shard, 64) && isName(r.entity, MAX_NAME_LENGTH) && isName(r.client, 64) && Number.isSafeInteger(r.seq) && (r.seq as number) > 0
  if (common && r.op === 'put' && keys === 'client,components,entity,op,seq,shard' && r.components != null && typeof r.components === 'object' && !Array.isArray(r.components)) return r as unknown as ForwardedInput
  if (common && r.op === 'delete' && keys === 'client,entity,op,seq,shard') return r as unknown as ForwardedInput
  throw new InputProtocolError('MALFORMED', 'input fields missing or mistyped')
}

function decodeAnswers (bytes: Uint8Array, count: number): InputAnswer[] {
  const value = decodeWire(bytes, () => new InputProtocolError('MALFORMED', 'not DAG-CBOR')) as Record<string, unknown> | null
  if (!Array.isArray(value?.b) || value.b.length !== count) throw new InputProtocolError('MALFORMED', `expected ${count} answers`)
  return (value.b as unknown[]).map(decodeAnswer)
}

function decodeAnswer (value: unknown): InputAnswer {
  const r = value as Record<string, unknown> | null
  if (r?.ok === true && typeof r.dup === 'boolean') return { ok: true, dup: r.dup }
  if (r?.ok === false && isName(r.code, 64) && typeof r.message === 'string' && typeof r.retry === 'boolean') return { ok: false, code: r.code, message: r.message.slice(0, 512), retry: r.retry }
  throw new InputProtocolError('MALFORMED', 'answer fields missing or mistyped')
}

export interface InputRelayComponents {
  libp2p: MetagridLibp2p
  /** Applies an input a peer relayed (after checking the peer may relay); never throws. */
  apply: (peer: string, input: ForwardedInput) => Promise<InputAnswer>
  metrics: P2pMetrics | null
  logger: Logger
}

interface Queued {
  input: ForwardedInput
  bytes: Uint8Array
  resolve: (answer: InputAnswer) => void
}

/** Hosts with inputs waiting for the end of this turn: bounded by the hosts a world has, and emptied every turn. */
interface Outbox {
  queued: Queued[]
  bytes: number
}

export class InputRelay {
  private readonly components: InputRelayComponents
  private readonly log: Logger
  private readonly channel: RequestChannel
  private readonly outboxes = new Map<string, Outbox>()
  private readonly peerIds = new Map<string, PeerId>()

  constructor (components: InputRelayComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:input' })
    this.channel = new RequestChannel(components.libp2p, { protocol: INPUT_PROTOCOL, maxFrameBytes: MAX_FRAME_BYTES, maxPending: MAX_IN_FLIGHT })
  }

  async start (): Promise<void> {
    const { libp2p, metrics } = this.components
    await answerChannel(libp2p, INPUT_PROTOCOL, { name: 'input', maxFrameBytes: MAX_FRAME_BYTES, maxConcurrent: MAX_IN_FLIGHT, maxStreams: MAX_STREAMS, metrics, log: this.log }, async (bytes, peer) => {
      const from = peer.toString()
      // Started in order, so two inputs of one entity are applied in the order they were sent.
      return dagCbor.encode({ b: await Promise.all(decodeInputs(bytes).map(async (input) => this.components.apply(from, input))) })
    })
  }

  async stop (): Promise<void> {
    this.channel.stop()
    await this.components.libp2p.unhandle(INPUT_PROTOCOL).catch(() => {})
  }

  /** Sends `input` to `host` with the others of this turn; an unreachable host or a garbled answer is a refusal worth retrying. */
  async send (host: string, input: ForwardedInput): Promise<InputAnswer> {
    const bytes = dagCbor.encode(input)
    if (bytes.byteLength > MAX_INPUT_BYTES) return { ok: false, code: 'INPUT_TOO_LARGE', message: `an input is at most ${MAX_INPUT_BYTES} bytes`, retry: false }
    return new Promise((resolve) => {
      let outbox = this.outboxes.get(host)
      if (outbox == null || outbox.queued.length >= MAX_BATCH || outbox.bytes + bytes.byteLength > MAX_FRAME_BYTES - 1024) {
        if (outbox != null) this.flush(host, outbox)
        outbox = { queued: [], bytes: 0 }
        this.outboxes.set(host, outbox)
        const scheduled = outbox
        setImmediate(() => { this.flush(host, scheduled) })
      }
      outbox.queued.push({ input, bytes, resolve })
      outbox.bytes += bytes.byteLength
    })
  }

  private flush (host: string, outbox: Outbox): void {
    if (this.outboxes.get(host) === outbox) this.outboxes.delete(host)
    const { queued } = outbox
    if (queued.length === 0) return
    outbox.queued = []
    void (async () => {
      let answers: InputAnswer[]
      try {
        const answer = await this.channel.request(this.peerId(host), dagCbor.encode({ b: queued.map((q) => q.bytes) }), REQUEST_TIMEOUT_MS)
        answers = decodeAnswers(answer, queued.length)
      } catch (err) {
        const code = wireErrorCode(err)
        this.log.debug({ code, host, inputs: queued.length, err }, 'relaying inputs failed')
        answers = queued.map((q) => ({ ok: false, code: 'HOST_UNREACHABLE', message: `the host of ${q.input.shard} did not answer (${code})`, retry: true }))
      }
      queued.forEach((q, i) => { q.resolve(answers[i]!) })
    })()
  }

  private peerId (host: string): PeerId {
    let id = this.peerIds.get(host)
    if (id == null) {
      if (this.peerIds.size >= 4096) this.peerIds.clear()
      id = peerIdFromString(host)
      this.peerIds.set(host, id)
    }
    return id
  }
}
