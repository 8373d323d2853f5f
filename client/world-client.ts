/**
 * `WorldClient`: a player's connection to the grid, the same code in Node
 * (24, which has WebSocket built in) and in browsers.
 *
 *     const world = new WorldClient({ urls: ['ws://127.0.0.1:7001/v1/session'] })
 *     world.addEventListener('enter', (e) => draw(e.detail))
 *     await world.ready()
 *     world.setArea({ x: 100, y: 100, radius: 150 })
 *     await world.put('physics', 'me', 120, 100, { name: 'ada' })
 *
 * It keeps the entities of its area in `entities` (key `<layer>/<entity>`)
 * and tells what changed through events: `enter`, `update`, `leave` (detail:
 * the entity), `tick` (detail: the layer and its tick number), `ack`
 * (detail: every ack frame, as it arrives), `open` (detail: the node),
 * `close`, `error` (detail: the node's error frame).
 *
 * It reconnects by itself: after a dropped connection it tries the next URL
 * of `urls` (backing off up to two seconds), says hello with the same client
 * id, sends its area again (and gets a fresh snapshot: entities that did not
 * come back leave) and sends every input not yet acknowledged again, with its
 * sequence number. The node applies an input once, however often it arrives
 * (client/protocol.ts); an input refused with `retry` is sent again until it
 * is acknowledged or the client closes.
 *
 * Sequence numbers start at the clock's milliseconds times 1000, so a client
 * restarted under the same id still numbers its inputs above the last one.
 */
import { decodeFrame, encodeFrame, SessionProtocolError, type AckFrame, type AreaFrame, type ClientFrame, type JsonValue, type TickFrame, type WelcomeFrame } from './protocol.ts'

export interface WorldClientOptions {
  /** Session endpoints (`ws://host:port/v1/session`), tried in turn. */
  urls: string[]
  /** Stable across reconnects; random by default. */
  client?: string
  /** A capability token naming the node (off loopback). */
  token?: Uint8Array
  /** Longest wait between reconnection attempts. */
  maxBackoffMs?: number
}

export interface VisibleEntity {
  key: string
  layer: string
  entity: string
  x: number
  y: number
  components: Record<string, JsonValue>
}

export interface Area { x: number, y: number, radius: number, layers?: string[] }

/** An input the node refused for good (or the client closed before its acknowledgement); `code` is the node's. */
export class InputRefusedError extends SessionProtocolError {
  static override name = 'InputRefusedError'
  override name = 'InputRefusedError'
}

interface Pending {
  frame: ClientFrame & { t: 'input' }
  /** Times it was refused with `retry`; the wait before sending it again doubles with each. */
  refusals: number
  resolve: (ack: AckFrame) => void
  reject: (err: Error) => void
  retryTimer?: ReturnType<typeof setTimeout>
}

export class WorldClient extends EventTarget {
  readonly client: string
  readonly entities = new Map<string, VisibleEntity>()
  /** The node this client is connected to now, null between connections. */
  node: string | null = null
  /** What the node said at welcome: tick rates per layer and the largest area radius. */
  welcome: WelcomeFrame | null = null
  /** Reconnections since the first connection. */
  reconnects = 0
  /** What went over the wire, both ways, since the client was made. */
  readonly stats = { framesIn: 0, bytesIn: 0, framesOut: 0, bytesOut: 0, ticks: 0, updates: 0, acks: 0, duplicates: 0, refusals: 0 }
  private readonly options: Required<Omit<WorldClientOptions, 'token'>> & { token?: Uint8Array }
  private socket: WebSocket | null = null
  private urlIndex = 0
  private backoff = 100
  private seq: number
  private area: Area | null = null
  private readonly pending = new Map<number, Pending>()
  /** Keys seen before a reconnect, per layer, not yet seen again in the new snapshot. */
  private readonly stale = new Map<string, Set<string>>()
  private closed = false
  private opened: Promise<void>
  private resolveOpened!: () => void

  constructor (options: WorldClientOptions) {
    super()
    if (options.urls.length === 0) throw new Error('WorldClient needs at least one session URL')
    this.options = { maxBackoffMs: 2_000, client: globalThis.crypto.randomUUID(), ...options }
    this.client = this.options.client
    this.seq = Date.now() * 1000
    this.opened = new Promise((resolve) => { this.resolveOpened = resolve })
    this.connect()
  }

  /** Resolves once a node has welcomed this client (the current connection or the next one). */
  async ready (): Promise<void> {
    return this.opened
  }

  /** Sets the area of interest; the node answers with a snapshot, then changes at each layer's tick. */
  setArea (area: Area): void {
    this.area = area
    this.sendFrame(this.areaFrame(area))
  }

  /** Writes this client's entity at a position; resolves once it is durable where its layer says. */
  async put (layer: string, entity: string, x: number, y: number, components: Record<string, JsonValue> = {}): Promise<AckFrame> {
    return this.input({ v: 1, t: 'input', seq: ++this.seq, op: 'put', layer, entity, x, y, components })
  }

  /** Deletes this client's entity (the one it last put; `x`, `y` locate it if it put none through this client). */
  async delete (layer: string, entity: string, x = 0, y = 0): Promise<AckFrame> {
    return this.input({ v: 1, t: 'input', seq: ++this.seq, op: 'delete', layer, entity, x, y })
  }

  /** Inputs sent and not yet acknowledged. */
  get unacknowledged (): number {
    return this.pending.size
  }

  close (): void {
    this.closed = true
    this.socket?.close(1000)
    for (const pending of this.pending.values()) {
      clearTimeout(pending.retryTimer)
      pending.reject(new InputRefusedError('CLOSED', 'the client was closed before the input was acknowledged'))
    }
    this.pending.clear()
  }

  private async input (frame: ClientFrame & { t: 'input' }): Promise<AckFrame> {
    if (this.closed) throw new InputRefusedError('CLOSED', 'the client is closed')
    return new Promise((resolve, reject) => {
      this.pending.set(frame.seq, { frame, refusals: 0, resolve, reject })
      this.sendFrame(frame)
    })
  }

  private areaFrame (area: Area): AreaFrame {
    return { v: 1, t: 'area', x: area.x, y: area.y, radius: area.radius, ...(area.layers != null ? { layers: area.layers } : {}) }
  }

  private sendFrame (frame: ClientFrame): void {
    // Not yet welcomed: the frame goes out with the others when the session opens (area and inputs are kept).
    if (this.socket?.readyState !== WebSocket.OPEN || this.node == null) return
    const bytes = encodeFrame(frame)
    this.stats.framesOut++
    this.stats.bytesOut += bytes.byteLength
    this.socket.send(bytes)
  }

  private connect (): void {
    if (this.closed) return
    const url = this.options.urls[this.urlIndex % this.options.urls.length]!
    const socket = new WebSocket(url)
    socket.binaryType = 'arraybuffer'
    this.socket = socket
    socket.addEventListener('open', () => {
      socket.send(encodeFrame({ v: 1, t: 'hello', client: this.client, ...(this.options.token != null ? { token: this.options.token } : {}) }))
    })
    socket.addEventListener('message', (event) => {
      if (!(event.data instanceof ArrayBuffer)) return
      this.stats.framesIn++
      this.stats.bytesIn += event.data.byteLength
      let frame
      try {
        frame = decodeFrame(new Uint8Array(event.data))
      } catch {
        socket.close(1002)
        return
      }
      this.receive(frame)
    })
    socket.addEventListener('close', () => {
      if (this.socket !== socket) return
      const wasOpen = this.node != null
      this.socket = null
      this.node = null
      if (wasOpen) {
        this.opened = new Promise((resolve) => { this.resolveOpened = resolve })
        this.dispatchEvent(new CustomEvent('close'))
      }
      if (this.closed) return
      this.urlIndex++
      const delay = this.backoff
      this.backoff = Math.min(this.backoff * 2, this.options.maxBackoffMs)
      setTimeout(() => { this.reconnects++; this.connect() }, delay)
    })
  }

  private receive (frame: { t: string } & Record<string, unknown>): void {
    switch (frame.t) {
      case 'welcome': {
        const welcome = frame as unknown as WelcomeFrame
        this.welcome = welcome
        this.node = welcome.node
        this.backoff = 100
        // What was seen before is kept until the new snapshot says whether it is still there.
        this.stale.clear()
        for (const entity of this.entities.values()) {
          let keys = this.stale.get(entity.layer)
          if (keys == null) this.stale.set(entity.layer, keys = new Set())
          keys.add(entity.key)
        }
        if (this.area != null) this.sendFrame(this.areaFrame(this.area))
        for (const pending of [...this.pending.values()].sort((a, b) => a.frame.seq - b.frame.seq)) {
          clearTimeout(pending.retryTimer)
          this.sendFrame(pending.frame)
        }
        this.dispatchEvent(new CustomEvent('open', { detail: { node: welcome.node } }))
        this.resolveOpened()
        return
      }
      case 'tick': this.tick(frame as unknown as TickFrame); return
      case 'ack': this.ack(frame as unknown as AckFrame); return
      case 'error':
        this.dispatchEvent(new CustomEvent('error', { detail: { code: frame.code, message: frame.message } }))
    }
  }

  private tick (frame: TickFrame): void {
    const stale = this.stale.get(frame.layer)
    this.stats.ticks++
    this.stats.updates += frame.u.length
    for (const entry of frame.u) {
      const key = entry[1]
      if (entry[0] === 'l') {
        const gone = this.entities.get(key)
        if (gone != null) {
          this.entities.delete(key)
          this.dispatchEvent(new CustomEvent('leave', { detail: gone }))
        }
        continue
      }
      const [kind, , x, y, components] = entry
      stale?.delete(key)
      const entity: VisibleEntity = { key, layer: frame.layer, entity: key.slice(frame.layer.length + 1), x, y, components }
      const known = this.entities.has(key)
      this.entities.set(key, entity)
      this.dispatchEvent(new CustomEvent(kind === 'e' && !known ? 'enter' : 'update', { detail: entity }))
    }
    if (stale != null) {
      // The first tick after a reconnect is the snapshot: what it did not bring back has left.
      for (const key of stale) {
        const gone = this.entities.get(key)
        if (gone == null) continue
        this.entities.delete(key)
        this.dispatchEvent(new CustomEvent('leave', { detail: gone }))
      }
      this.stale.delete(frame.layer)
    }
    this.dispatchEvent(new CustomEvent('tick', { detail: { layer: frame.layer, n: frame.n } }))
  }

  private ack (frame: AckFrame): void {
    this.dispatchEvent(new CustomEvent('ack', { detail: frame }))
    const pending = this.pending.get(frame.seq)
    if (pending == null) return
    if (frame.ok) {
      this.stats.acks++
      if (frame.dup === true) this.stats.duplicates++
      this.pending.delete(frame.seq)
      pending.resolve(frame)
      // Older inputs of the same entity are superseded now: the node would acknowledge them as such and apply
      // none of them, so they are settled here rather than sent again (what keeps an overloaded node from a retry storm).
      for (const [seq, older] of this.pending) {
        if (seq >= frame.seq || older.frame.layer !== pending.frame.layer || older.frame.entity !== pending.frame.entity) continue
        clearTimeout(older.retryTimer)
        this.pending.delete(seq)
        this.stats.duplicates++
        older.resolve({ v: 1, t: 'ack', seq, ok: true, dup: true })
      }
      return
    }
    this.stats.refusals++
    if (frame.retry === true && !this.closed) {
      clearTimeout(pending.retryTimer)
      pending.retryTimer = setTimeout(() => { this.sendFrame(pending.frame) }, Math.min(250 * 2 ** pending.refusals++, 4_000))
      return
    }
    this.pending.delete(frame.seq)
    pending.reject(new InputRefusedError(frame.code ?? 'REFUSED', frame.message ?? 'the node refused the input'))
  }
}


export * from './protocol.ts'
