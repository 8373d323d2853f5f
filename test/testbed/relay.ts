/**
 * A userspace TCP relay in front of one testbed node. The node announces the
 * relay's address instead of its own, so every connection to it passes here.
 * Each node dials out from its own loopback address (127.0.0.<10+i>, through
 * the daemon's `outboundBindAddress`), so the relay knows which node is on the
 * other end and delays each direction by that link's one-way latency.
 *
 * A cut link holds bytes, in order, until it heals (as TCP retransmits through
 * a partition): the connection survives a short cut and the protocols above
 * time out on their own, exactly as they would on a real network.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import type { LinkTable } from './links.ts'

/** Loopback source address of testbed node i. */
export function sourceAddress (index: number): string {
  return `127.0.0.${10 + index}`
}

export function nodeIndexOf (address: string | undefined): number | undefined {
  const match = /^(?:::ffff:)?127\.0\.0\.(\d+)$/.exec(address ?? '')
  const octet = Number(match?.[1])
  return match != null && octet >= 10 ? octet - 10 : undefined
}

type Item = { due: number, chunk: Buffer } | { due: number, end: true }

/** One direction of one relayed connection: delivers chunks in order once due, unless the link is cut. */
class DelayedDirection {
  private readonly queue: Item[] = []
  private timer: NodeJS.Timeout | undefined
  private readonly to: Socket
  private readonly delay: () => number
  private readonly cut: () => boolean
  bytes = 0

  constructor (from: Socket, to: Socket, delay: () => number, cut: () => boolean) {
    this.to = to
    this.delay = delay
    this.cut = cut
    from.on('data', (chunk: Buffer) => {
      this.bytes += chunk.byteLength
      this.push({ due: performance.now() + this.delay(), chunk })
    })
    from.on('end', () => this.push({ due: performance.now() + this.delay(), end: true }))
  }

  private push (item: Item): void {
    this.queue.push(item)
    this.schedule()
  }

  /** Called when links change: a healed link flushes what it held. */
  schedule (): void {
    if (this.timer != null || this.queue.length === 0 || this.cut()) return
    const wait = Math.max(0, this.queue[0]!.due - performance.now())
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.flush()
    }, wait)
  }

  private flush (): void {
    const now = performance.now()
    while (this.queue.length > 0 && this.queue[0]!.due <= now + 0.5 && !this.cut()) {
      const item = this.queue.shift()!
      if (this.to.destroyed) return
      if ('end' in item) this.to.end()
      else this.to.write(item.chunk)
    }
    this.schedule()
  }

  close (): void {
    clearTimeout(this.timer)
    this.queue.length = 0
  }
}

export class Relay {
  readonly index: number
  readonly port: number
  /** The node's real listen port; known once the node is up, and new after each restart. */
  targetPort: number
  private readonly links: LinkTable
  private readonly server: Server
  private readonly directions = new Set<DelayedDirection>()
  private readonly sockets = new Set<Socket>()
  private readonly onChange = (): void => { for (const direction of this.directions) direction.schedule() }
  /** Bytes relayed in both directions since start. */
  bytes = 0

  private constructor (index: number, port: number, targetPort: number, links: LinkTable, server: Server) {
    this.index = index
    this.port = port
    this.targetPort = targetPort
    this.links = links
    this.server = server
    links.on('change', this.onChange)
    server.on('connection', (socket) => { this.relay(socket) })
  }

  static async listen (index: number, port: number, targetPort: number, links: LinkTable): Promise<Relay> {
    const server = createServer({ noDelay: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    return new Relay(index, (server.address() as { port: number }).port, targetPort, links, server)
  }

  private relay (inbound: Socket): void {
    const from = nodeIndexOf(inbound.remoteAddress)
    const outbound = createConnection({ host: '127.0.0.1', port: this.targetPort, noDelay: true })
    this.sockets.add(inbound)
    this.sockets.add(outbound)
    const to = this.index
    const cut = (): boolean => from != null && this.links.isCut(from, to)
    const up = new DelayedDirection(inbound, outbound, () => (from == null ? 0 : this.links.oneWayMs(from, to)), cut)
    const down = new DelayedDirection(outbound, inbound, () => (from == null ? 0 : this.links.oneWayMs(to, from)), cut)
    this.directions.add(up)
    this.directions.add(down)
    let closed = false
    const close = (): void => {
      if (closed) return
      closed = true
      this.bytes += up.bytes + down.bytes
      up.close()
      down.close()
      this.directions.delete(up)
      this.directions.delete(down)
      this.sockets.delete(inbound)
      this.sockets.delete(outbound)
      inbound.destroy()
      outbound.destroy()
    }
    // A reset on either side (a killed node) tears the relayed connection down, as the kernel would.
    inbound.on('error', close).on('close', close)
    outbound.on('error', close).on('close', close)
  }

  /** Bytes relayed so far, including connections still open. */
  bytesRelayed (): number {
    let open = 0
    for (const direction of this.directions) open += direction.bytes
    return this.bytes + open
  }

  async close (): Promise<void> {
    this.links.off('change', this.onChange)
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
