import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CoordinateError, estimateRtt, isValidCoordinate, originCoordinate, VivaldiClient } from '../../p2p/coordinates/vivaldi.ts'
import { seededRandom } from '../helpers/random.ts'
import { latencyMatrix, pickCities } from '../testbed/geo.ts'

/** Runs Vivaldi over a known RTT matrix, each node sampling a random peer each round. */
function simulate (matrix: number[][], rounds: number, noise: number, seed = 1): VivaldiClient[] {
  const random = seededRandom(seed)
  const clients = matrix.map(() => new VivaldiClient({}, random))
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < clients.length; i++) {
      let j = Math.floor(random() * clients.length)
      if (j === i) j = (j + 1) % clients.length
      const rtt = matrix[i]![j]! * (1 + (random() - 0.5) * 2 * noise)
      clients[i]!.update(String(j), clients[j]!.current, rtt)
    }
  }
  return clients
}

function medianRelativeError (clients: VivaldiClient[], matrix: number[][]): number {
  const errors: number[] = []
  for (let i = 0; i < clients.length; i++) {
    for (let j = i + 1; j < clients.length; j++) {
      const estimate = estimateRtt(clients[i]!.current, clients[j]!.current)
      errors.push(Math.abs(estimate - matrix[i]![j]!) / matrix[i]![j]!)
    }
  }
  errors.sort((a, b) => a - b)
  return errors[Math.floor(errors.length / 2)]!
}

describe('Vivaldi coordinates', () => {
  it('starts at the origin knowing nothing', () => {
    const c = new VivaldiClient()
    expect(c.current).toEqual(originCoordinate())
    expect(c.current.error).toBe(1.5)
  })

  it('learns a single link', () => {
    const a = new VivaldiClient({}, seededRandom(2))
    const b = new VivaldiClient({}, seededRandom(3))
    for (let i = 0; i < 200; i++) {
      a.update('b', b.current, 50)
      b.update('a', a.current, 50)
    }
    expect(a.estimateTo(b.current)).toBeGreaterThan(45)
    expect(a.estimateTo(b.current)).toBeLessThan(55)
    expect(a.current.error).toBeLessThan(0.2)
  })

  it('embeds 20 real cities with a median relative error under 10%', () => {
    const matrix = latencyMatrix(pickCities(20))
    const clients = simulate(matrix, 600, 0.05)
    expect(medianRelativeError(clients, matrix)).toBeLessThan(0.10)
  })

  it('ignores a single delayed sample thanks to the median filter', () => {
    const a = new VivaldiClient({}, seededRandom(4))
    const b = new VivaldiClient({}, seededRandom(5))
    for (let i = 0; i < 200; i++) {
      a.update('b', b.current, 20)
      b.update('a', a.current, 20)
    }
    const before = a.estimateTo(b.current)
    a.update('b', b.current, 2000)
    expect(Math.abs(a.estimateTo(b.current) - before)).toBeLessThan(1)
  })

  it('refuses impossible samples and malformed peer coordinates without moving', () => {
    const a = new VivaldiClient()
    const before = a.current
    for (const rtt of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 60_000]) {
      expect(() => a.update('b', originCoordinate(), rtt)).toThrow(CoordinateError)
    }
    for (const bad of [
      { ...originCoordinate(), vec: [1, 2] },
      { ...originCoordinate(), error: -1 },
      { ...originCoordinate(), height: Number.NaN },
      { ...originCoordinate(), vec: originCoordinate().vec.map(() => Number.POSITIVE_INFINITY) }
    ]) {
      expect(() => a.update('b', bad, 10)).toThrow(/malformed/)
    }
    expect(a.current).toEqual(before)
  })

  it('stays valid for any sequence of plausible samples', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.double({ min: 0.05, max: 5000, noNaN: true })), { minLength: 1, maxLength: 300 }),
      (samples) => {
        const clients = Array.from({ length: 5 }, (_, i) => new VivaldiClient({}, seededRandom(i + 10)))
        for (const [k, rtt] of samples) {
          const i = k
          const j = (k + 1) % 5
          clients[i]!.update(String(j), clients[j]!.current, rtt)
        }
        return clients.every((c) => isValidCoordinate(c.current))
      }
    ), { numRuns: 300 })
  })
})
