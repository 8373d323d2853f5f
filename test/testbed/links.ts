/**
 * The emulated network: a one-way delay for every directed link between
 * testbed nodes, and which links are cut. Relays consult it for every chunk,
 * so a change (cut, heal, new delay) applies to live connections at once.
 */
import { EventEmitter } from 'node:events'

export class LinkTable extends EventEmitter {
  /** One-way delay from node i to node j, ms. */
  private readonly delays: number[][]
  private readonly cut = new Set<string>()

  constructor (rttMatrix: number[][]) {
    super()
    // One listener per relay; a 30-node testbed has 30.
    this.setMaxListeners(0)
    // Symmetric geography: each direction carries half the round trip.
    this.delays = rttMatrix.map((row) => row.map((rtt) => rtt / 2))
  }

  get size (): number {
    return this.delays.length
  }

  oneWayMs (from: number, to: number): number {
    return this.delays[from]?.[to] ?? 0
  }

  rttMs (a: number, b: number): number {
    return this.oneWayMs(a, b) + this.oneWayMs(b, a)
  }

  private key (a: number, b: number): string {
    return a < b ? `${a}-${b}` : `${b}-${a}`
  }

  isCut (a: number, b: number): boolean {
    return this.cut.has(this.key(a, b))
  }

  /** Cuts the link between a and b in both directions: bytes are held, as a partitioned network holds TCP segments. */
  cutLink (a: number, b: number): void {
    this.cut.add(this.key(a, b))
    this.emit('change')
  }

  healLink (a: number, b: number): void {
    this.cut.delete(this.key(a, b))
    this.emit('change')
  }

  /** Cuts every link between the two groups. */
  partition (left: number[], right: number[]): void {
    for (const a of left) for (const b of right) this.cut.add(this.key(a, b))
    this.emit('change')
  }

  healAll (): void {
    this.cut.clear()
    this.emit('change')
  }
}
