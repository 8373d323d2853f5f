/**
 * Vivaldi network coordinates (Dabek et al., SIGCOMM 2004) with the
 * refinements HashiCorp Serf runs in production: a height term for the access
 * link (Dabek §5.3), an adaptive timestep weighted by relative confidence, an
 * adjustment term over a window of recent errors (Lee et al. 2010), a
 * per-peer median filter on RTT samples (Ledlie et al. 2007), and a weak
 * gravity towards the origin so coordinates do not drift away over months.
 *
 * Units are milliseconds throughout. A node updates its own coordinate from
 * (peer coordinate, measured RTT) pairs; anyone can then estimate the RTT
 * between two nodes from their coordinates alone.
 */

export interface Coordinate {
  /** Euclidean part, ms. */
  vec: number[]
  /** Confidence: 0 is certain, `maxError` knows nothing. Dimensionless. */
  error: number
  /** Offset learned from recent prediction errors, ms. */
  adjustment: number
  /** Non-Euclidean access-link term, ms. */
  height: number
}

export interface VivaldiOptions {
  /** Serf found no gain past 8 dimensions (Ledlie et al. report the same). */
  dimensions: number
  /** Error of a node that has not measured anything yet, and the cap on error. */
  maxError: number
  /** How fast confidence moves with one observation (Vivaldi's c_e). */
  ce: number
  /** How far one observation moves the coordinate (Vivaldi's c_c). */
  cc: number
  /** Samples in the adjustment window; 0 disables the adjustment term. */
  adjustmentWindow: number
  /** Height floor: it must stay positive, and small beside real RTTs. */
  heightMin: number
  /** Samples kept per peer for the median filter; 3 rejects single spikes at little lag. */
  latencyFilterSize: number
  /**
   * Gravity scale, Serf's 150 s in ms: the pull towards the origin is
   * (distance / rho)² *seconds* per update, as Serf computes it (in ms here:
   * 1000 · (distance / rho)²). Taken in ms instead, it would be a thousand
   * times weaker than Serf's and coordinates would drift.
   */
  gravityRho: number
  /** Samples above this are measurement faults, not network distance. */
  maxRttMs: number
}

export const defaultVivaldiOptions: VivaldiOptions = {
  dimensions: 8,
  maxError: 1.5,
  ce: 0.25,
  cc: 0.25,
  adjustmentWindow: 20,
  heightMin: 0.01,
  latencyFilterSize: 3,
  gravityRho: 150_000,
  maxRttMs: 10_000
}

/** Two coordinates closer than this are treated as the same point. */
const ZERO = 1e-6
const MS_PER_S = 1000

export class CoordinateError extends Error {
  static override name = 'CoordinateError'
  override name = 'CoordinateError'
}

export function originCoordinate (options: VivaldiOptions = defaultVivaldiOptions): Coordinate {
  return { vec: new Array<number>(options.dimensions).fill(0), error: options.maxError, adjustment: 0, height: options.heightMin }
}

/** Checks a coordinate received from elsewhere: right dimension, all finite, in sane ranges. */
export function isValidCoordinate (c: Coordinate, options: VivaldiOptions = defaultVivaldiOptions): boolean {
  return Array.isArray(c.vec) &&
    c.vec.length === options.dimensions &&
    c.vec.every((x) => Number.isFinite(x) && Math.abs(x) < 1e7) &&
    Number.isFinite(c.error) && c.error >= 0 && c.error <= options.maxError &&
    Number.isFinite(c.adjustment) && Math.abs(c.adjustment) < 1e7 &&
    Number.isFinite(c.height) && c.height >= 0 && c.height < 1e7
}

function magnitude (vec: number[]): number {
  let sum = 0
  for (const x of vec) sum += x * x
  return Math.sqrt(sum)
}

function rawDistance (a: Coordinate, b: Coordinate): number {
  let sum = 0
  for (let i = 0; i < a.vec.length; i++) {
    const d = (a.vec[i] ?? 0) - (b.vec[i] ?? 0)
    sum += d * d
  }
  return Math.sqrt(sum) + a.height + b.height
}

/** Estimated RTT between the owners of two coordinates, in ms. */
export function estimateRtt (a: Coordinate, b: Coordinate): number {
  const raw = rawDistance(a, b)
  const adjusted = raw + a.adjustment + b.adjustment
  return adjusted > 0 ? adjusted : raw
}

/** Moves `self` by `force` ms along the line from `other` (positive pushes away). */
function applyForce (self: Coordinate, force: number, other: Coordinate, options: VivaldiOptions, random: () => number): Coordinate {
  const direction = self.vec.map((x, i) => x - (other.vec[i] ?? 0))
  let mag = magnitude(direction)
  let unit: number[]
  if (mag > ZERO) {
    unit = direction.map((x) => x / mag)
  } else {
    // On top of each other: push in a random direction so the two can separate.
    const r = self.vec.map(() => random() - 0.5)
    const rm = magnitude(r)
    unit = rm > ZERO ? r.map((x) => x / rm) : self.vec.map((_, i) => (i === 0 ? 1 : 0))
    mag = 0
  }
  const next: Coordinate = { ...self, vec: self.vec.map((x, i) => x + (unit[i] ?? 0) * force) }
  if (mag > ZERO) {
    next.height = Math.max(self.height + force * (self.height + other.height) / mag, options.heightMin)
  }
  return next
}

/** A node's own coordinate and the state that updates it. */
export class VivaldiClient {
  private coordinate: Coordinate
  private readonly options: VivaldiOptions
  private readonly adjustmentSamples: number[] = []
  private adjustmentIndex = 0
  private readonly filters = new Map<string, number[]>()
  private readonly random: () => number
  /** Updates applied since creation; a coordinate that has seen none knows nothing. */
  updates = 0

  constructor (options: Partial<VivaldiOptions> = {}, random: () => number = Math.random) {
    this.options = { ...defaultVivaldiOptions, ...options }
    this.coordinate = originCoordinate(this.options)
    this.random = random
  }

  get current (): Coordinate {
    return { ...this.coordinate, vec: [...this.coordinate.vec] }
  }

  /** Median of the last few samples for this peer, so one delayed ping does not throw the coordinate. */
  private filtered (peer: string, rttMs: number): number {
    const samples = this.filters.get(peer) ?? []
    samples.push(rttMs)
    if (samples.length > this.options.latencyFilterSize) samples.shift()
    this.filters.set(peer, samples)
    const sorted = [...samples].sort((a, b) => a - b)
    return sorted[Math.floor(sorted.length / 2)] ?? rttMs
  }

  /** Forgets a peer's filter state, for a peer that left. */
  forget (peer: string): void {
    this.filters.delete(peer)
  }

  /**
   * Feeds one RTT sample to `peer`, whose coordinate is `other`. Returns the
   * new coordinate. Throws CoordinateError for a sample or coordinate that
   * cannot be right; the current coordinate is then left untouched.
   */
  update (peer: string, other: Coordinate, rttMs: number): Coordinate {
    if (!Number.isFinite(rttMs) || rttMs <= 0 || rttMs > this.options.maxRttMs) {
      throw new CoordinateError(`RTT sample ${rttMs} ms is outside (0, ${this.options.maxRttMs}]`)
    }
    if (!isValidCoordinate(other, this.options)) throw new CoordinateError('peer coordinate is malformed')
    const rtt = Math.max(this.filtered(peer, rttMs), ZERO)
    const before = this.coordinate

    // Vivaldi with an adaptive timestep: the less sure we are relative to the peer, the further we move.
    // The error is measured on the estimate as it is used (with the adjustment terms), as Serf does.
    const dist = estimateRtt(before, other)
    const totalError = Math.max(before.error + other.error, ZERO)
    const weight = before.error / totalError
    const wrongness = Math.abs(dist - rtt) / rtt
    let next: Coordinate = {
      ...before,
      error: Math.min(this.options.ce * weight * wrongness + before.error * (1 - this.options.ce * weight), this.options.maxError)
    }
    next = applyForce(next, this.options.cc * weight * (rtt - dist), other, this.options, this.random)

    // Adjustment: half the mean recent residual, added to both ends of an estimate.
    if (this.options.adjustmentWindow > 0) {
      this.adjustmentSamples[this.adjustmentIndex] = rtt - rawDistance(next, other)
      this.adjustmentIndex = (this.adjustmentIndex + 1) % this.options.adjustmentWindow
      const sum = this.adjustmentSamples.reduce((a, b) => a + b, 0)
      next.adjustment = sum / (2 * this.options.adjustmentWindow)
    }

    // Gravity: a pull towards the origin that grows with the square of the distance (Serf's force is in seconds).
    const origin = originCoordinate(this.options)
    const fromOrigin = estimateRtt(origin, next)
    next = applyForce(next, -MS_PER_S * (fromOrigin / this.options.gravityRho) ** 2, origin, this.options, this.random)

    if (!isValidCoordinate(next, this.options)) {
      // Numerical trouble (it should not happen): start over rather than spread garbage.
      this.coordinate = originCoordinate(this.options)
      throw new CoordinateError('update produced an invalid coordinate; reset to the origin')
    }
    this.coordinate = next
    this.updates++
    return this.current
  }

  /** Replaces this node's coordinate (Serf's SetCoordinate); a coordinate that is not valid is refused. */
  setCoordinate (coordinate: Coordinate): void {
    if (!isValidCoordinate(coordinate, this.options)) throw new CoordinateError('coordinate is malformed')
    this.coordinate = { ...coordinate, vec: [...coordinate.vec] }
  }

  /** Estimated RTT from this node to the owner of `other`, in ms. */
  estimateTo (other: Coordinate): number {
    return estimateRtt(this.coordinate, other)
  }
}
