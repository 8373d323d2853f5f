/**
 * Inputs of world sessions carried to the shard's host, over
 * `/metagrid/input/1.0.0`: one request (the input), one answer (its outcome),
 * on a fresh stream. The node a client is connected to relays; the host
 * applies the input through the same write path as its own clients' inputs
 * (the `apply` it is given), after checking that the relaying peer may relay
 * at all. This file only carries and checks the shape of what it carries:
 * every field is bounded before `apply` sees it.
 */
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { INPUT_PROTOCOL } from '../constants.ts'
import { decodeWire, wireErrorCode, WireProtocolError } from '../wire-error.ts'
import { answerRequests, requestOnce } from '../request.ts'
import { MAX_NAME_LENGTH } from '../../storage/crdt/shard-doc.ts'
import type { JsonValue } from '../../storage/crdt/codec.ts'
import type { MetagridLibp2p } from '../libp2p.ts'
import type { Logger } from '../logger.ts'
import type { P2pMetrics } from '../metrics.ts'

/** An entity of 256 KiB plus the envelope: a session frame's own bound. */
const MAX_FRAME_BYTES = 320 * 1024
const MAX_STREAMS = 64
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

function decodeAnswer (bytes: Uint8Array): InputAnswer {
  const r = decodeWire(bytes, () => new InputProtocolError('MALFORMED', 'not DAG-CBOR')) as Record<string, unknown> | null
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

export class InputRelay {
  private readonly components: InputRelayComponents
  private readonly log: Logger

  constructor (components: InputRelayComponents) {
    this.components = components
    this.log = components.logger.child({ component: 'metagrid:input' })
  }

  async start (): Promise<void> {
    const { libp2p, metrics } = this.components
    await answerRequests(libp2p, INPUT_PROTOCOL, { name: 'input', timeoutMs: REQUEST_TIMEOUT_MS * 3, maxFrameBytes: MAX_FRAME_BYTES, maxStreams: MAX_STREAMS, metrics, log: this.log }, async (bytes, peer) => {
      return dagCbor.encode(await this.components.apply(peer.toString(), decodeInput(bytes)))
    })
  }

  async stop (): Promise<void> {
    await this.components.libp2p.unhandle(INPUT_PROTOCOL).catch(() => {})
  }

  /** Sends `input` to `host`; an unreachable host or a garbled answer is a refusal worth retrying. */
  async send (host: string, input: ForwardedInput): Promise<InputAnswer> {
    try {
      return decodeAnswer(await requestOnce(this.components.libp2p, peerIdFromString(host), INPUT_PROTOCOL, dagCbor.encode(input), { timeoutMs: REQUEST_TIMEOUT_MS, maxFrameBytes: MAX_FRAME_BYTES }))
    } catch (err) {
      const code = wireErrorCode(err)
      this.log.debug({ code, host, shard: input.shard, err }, 'relaying an input failed')
      return { ok: false, code: 'HOST_UNREACHABLE', message: `the host of ${input.shard} did not answer (${code})`, retry: true }
    }
  }
}
