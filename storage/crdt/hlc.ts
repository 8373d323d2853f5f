/**
 * Hybrid logical clock (Kulkarni, Demirbas et al., 2014): a timestamp that
 * stays close to wall-clock time but never goes backwards and always orders
 * an event after every event it could have seen. It is (wall ms, counter);
 * ties between replicas are broken by replica id where a total order is
 * needed (last-writer-wins).
 *
 * A remote timestamp further ahead of our wall clock than `maxDriftMs` is
 * refused: accepting it would drag our clock (and every write after) into
 * that future.
 */

export interface Timestamp {
  wall: number
  counter: number
}

export class ClockDriftError extends Error {
  static override name = 'ClockDriftError'
  override name = 'ClockDriftError'
  readonly driftMs: number
  constructor (driftMs: number, maxDriftMs: number) {
    super(`remote clock is ${driftMs} ms ahead of ours, more than the ${maxDriftMs} ms allowed`)
    this.driftMs = driftMs
  }
}

export function compareTimestamps (aWall: number, aCounter: number, bWall: number, bCounter: number): number {
  return aWall - bWall || aCounter - bCounter
}

export class HybridClock {
  /** Last timestamp issued or observed. */
  wall = 0
  counter = 0
  private readonly now: () => number
  readonly maxDriftMs: number

  constructor (maxDriftMs: number, now: () => number = Date.now) {
    this.maxDriftMs = maxDriftMs
    this.now = now
  }

  /** Advances for a local event; the result is in `wall` and `counter` (read them right away). */
  tick (): void {
    const physical = this.now()
    if (physical > this.wall) {
      this.wall = physical
      this.counter = 0
    } else {
      this.counter++
    }
  }

  /** Advances past a remote timestamp, refusing one too far in the future. */
  observe (wall: number, counter: number): void {
    const physical = this.now()
    if (wall - physical > this.maxDriftMs) throw new ClockDriftError(wall - physical, this.maxDriftMs)
    if (physical > this.wall && physical > wall) {
      this.wall = physical
      this.counter = 0
    } else if (wall > this.wall) {
      this.wall = wall
      this.counter = counter + 1
    } else if (wall === this.wall) {
      this.counter = Math.max(this.counter, counter) + 1
    } else {
      this.counter++
    }
  }

  /** Checks a remote timestamp without advancing the clock. */
  check (wall: number): void {
    const drift = wall - this.now()
    if (drift > this.maxDriftMs) throw new ClockDriftError(drift, this.maxDriftMs)
  }
}
