/**
 * The world session protocol, version 1: what a world client and the node it
 * connects to say over one WebSocket (`GET /v1/session` on the node's API
 * port). Every message is one binary frame holding one DAG-CBOR map with a
 * version `v` and a type `t`. This file is the protocol's one definition,
 * shared by the daemon and the client SDK (Node and browsers alike: it
 * imports nothing of Node's).
 *
 * Client to node:
 * - `hello`  first frame: a client id (stable across reconnects, it keys the
 *   deduplication of inputs) and, off loopback, a capability token.
 * - `area`   the area of interest: a circle and the layers to see.
 * - `input`  a write of the client's own entity: `put` (the components, at a
 *   position) or `delete`, with a sequence number that grows per client.
 *
 * Node to client:
 * - `welcome` the session is open: the node, the world's bounds and layers,
 *   the tick rates per layer and the largest area radius.
 * - `tick`    per layer tick, the changes to what the client sees: entries
 *   `['e', key, x, y, components]` (entered), `['u', …]` (updated),
 *   `['l', key]` (left). The first tick after an `area` is the snapshot.
 * - `ack`     an input's outcome: durable where its layer's rule says
 *   (`ok`), a duplicate or superseded input (`ok`, `dup`), or refused
 *   (`code`; `retry` says whether sending it again may succeed).
 * - `error`   the session ends (a bad frame, a refused token); then close.
 *
 * Keys are `<layer>/<entity>`: an entity keeps its key when it crosses a
 * shard border.
 */
import * as dagCbor from '@ipld/dag-cbor'

export const SESSION_PROTOCOL_VERSION = 1
export const SESSION_PATH = '/v1/session'
/** Largest frame either side sends or accepts. */
export const MAX_SESSION_FRAME_BYTES = 256 * 1024

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

export interface HelloFrame { v: 1, t: 'hello', client: string, token?: Uint8Array }
export interface AreaFrame { v: 1, t: 'area', x: number, y: number, radius: number, layers?: string[] }
export interface InputFrame {
  v: 1
  t: 'input'
  seq: number
  op: 'put' | 'delete'
  layer: string
  entity: string
  /** Where the entity is: it picks the shard (and is kept as the entity's `pos` component). */
  x: number
  y: number
  components?: Record<string, JsonValue>
}
export type ClientFrame = HelloFrame | AreaFrame | InputFrame

export type TickEntry = ['e' | 'u', string, number, number, Record<string, JsonValue>] | ['l', string]
export interface WorldBounds { minX: number, minY: number, maxX: number, maxY: number, cellSize: number, layers: string[] }
export interface WelcomeFrame { v: 1, t: 'welcome', node: string, session: string, tickHz: Record<string, number>, maxRadius: number, world: WorldBounds }
export interface TickFrame { v: 1, t: 'tick', layer: string, n: number, u: TickEntry[] }
export interface AckFrame { v: 1, t: 'ack', seq: number, ok: boolean, dup?: boolean, shard?: string, code?: string, message?: string, retry?: boolean }
export interface ErrorFrame { v: 1, t: 'error', code: string, message: string }
export type ServerFrame = WelcomeFrame | TickFrame | AckFrame | ErrorFrame

/** The component an input's position is kept in, and the one that records which input of which client wrote an entity last. */
export const POSITION_COMPONENT = 'pos'
export const INPUT_COMPONENT = '_in'

/** An error of the session protocol with a bounded code: a frame one side refused, an input the node refused. */
export class SessionProtocolError extends Error {
  static override name = 'SessionProtocolError'
  override name = 'SessionProtocolError'
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.code = code
  }
}

export function encodeFrame (frame: ClientFrame | ServerFrame): Uint8Array {
  return dagCbor.encode(frame)
}

/** Decodes a frame's envelope: a DAG-CBOR map of this version with a string type. The fields are the reader's to check. */
export function decodeFrame (bytes: Uint8Array): { t: string } & Record<string, unknown> {
  if (bytes.byteLength > MAX_SESSION_FRAME_BYTES) throw new SessionProtocolError('TOO_LARGE', `a frame of ${bytes.byteLength} bytes; at most ${MAX_SESSION_FRAME_BYTES}`)
  let value: unknown
  try {
    value = dagCbor.decode(bytes)
  } catch {
    throw new SessionProtocolError('MALFORMED', 'a frame is one DAG-CBOR map')
  }
  if (value == null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) throw new SessionProtocolError('MALFORMED', 'a frame is one DAG-CBOR map')
  const frame = value as Record<string, unknown>
  if (frame.v !== SESSION_PROTOCOL_VERSION) throw new SessionProtocolError('VERSION', `session protocol version ${String(frame.v)}; this side speaks ${SESSION_PROTOCOL_VERSION}`)
  if (typeof frame.t !== 'string') throw new SessionProtocolError('MALFORMED', 'a frame names its type in t')
  return frame as { t: string } & Record<string, unknown>
}

/** The key an entity is seen under: its layer and id, the same on both sides of a shard border. */
export function entityKey (layer: string, entity: string): string {
  return `${layer}/${entity}`
}
