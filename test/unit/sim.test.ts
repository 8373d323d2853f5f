import { describe, expect, it } from 'vitest'
import { Simulator } from '../sim/simulator.ts'
import { figures } from '../sim/report.ts'

/** A small grid: the same code as `npm run sim`, at a size a unit test can afford. */
function run (options: ConstructorParameters<typeof Simulator>[0]): Simulator {
  const sim = new Simulator(options)
  sim.run()
  return sim
}

describe('the simulator (real SWIM, Vivaldi and placement cores on a virtual clock)', () => {
  it('is deterministic: one seed, one run', () => {
    const a = run({ nodes: 240, regions: 4, seed: 7, durationS: 90 })
    const b = run({ nodes: 240, regions: 4, seed: 7, durationS: 90 })
    const c = run({ nodes: 240, regions: 4, seed: 8, durationS: 90 })
    expect(b.events).toBe(a.events)
    expect(b.recorder.samples).toEqual(a.recorder.samples)
    expect(b.recorder.failoverMs).toEqual(a.recorder.failoverMs)
    expect(c.recorder.samples).not.toEqual(a.recorder.samples)
  })

  it('fails a killed host\'s shards over within seconds, declares no live node dead, and every region comes to agree on its members', () => {
    const sim = run({ nodes: 320, regions: 4, seed: 1, durationS: 120, killTrials: 10 })
    const result = figures(sim, 0, null)
    expect(result.failoverMs?.n).toBeGreaterThanOrEqual(8)
    // Suspicion at the next host (a probe cycle, or a peer's claim) and the voters' 1 s timeout: a few seconds, not tens.
    expect(result.failoverMs!.p50).toBeLessThan(5_000)
    expect(result.failoverMs!.p50).toBeGreaterThanOrEqual(1_000 - 250)
    expect(result.falseDeaths).toBe(0)
    expect(result.agreementMs?.n).toBeGreaterThan(0)
    expect(result.agreementMs!.p50).toBeLessThan(15_000)
    // The lost region's shards are hosted next door once its summary is stale.
    expect(result.regionLostRehomeS).not.toBeNull()
    expect(result.samples.at(-1)!.homeShare).toBeCloseTo(0.75, 2)
  })

  it('costs a node what its region costs: fewer members, fewer bytes, than the same nodes in one flat region', () => {
    const flat = figures(run({ nodes: 400, regions: 1, seed: 2, durationS: 60, faults: false }), 0, null)
    const regional = figures(run({ nodes: 400, regions: 4, seed: 2, durationS: 60, faults: false }), 0, null)
    expect(flat.perNode.membersTracked).toBeGreaterThan(390)
    expect(regional.perNode.membersTracked).toBeLessThan(110)
    expect(regional.perNode.bytesOutPerS!.p50 * 3).toBeLessThan(flat.perNode.bytesOutPerS!.p50)
    expect(regional.flatPlacementMs).toBeGreaterThan(0)
  })

  it('replicates CRDT shards with the real merge: writes reach every replica in a round trip or so, a split region\'s replicas drift apart and are equal soon after the heal', () => {
    const sim = run({ nodes: 250, regions: 5, seed: 3, durationS: 150, killTrials: 0, churnPerMin: 0 })
    const crdt = figures(sim, 0, null).crdt!
    expect(crdt.shards).toBe(10)
    expect(crdt.writes).toBeGreaterThan(1_500)
    // Delta gossip inside a region: one way is a few ms; a lost delta waits for anti-entropy.
    expect(crdt.convergenceMs!.p50).toBeLessThan(50)
    const split = crdt.partitions.find((p) => p.event === 'split')!
    expect(split.writes).toBeGreaterThan(0)
    expect(split.maxDivergentEntities).toBeGreaterThan(0)
    // Equal again within seconds of the heal (the goal is 10 s), not at the next 30 s anti-entropy round.
    expect(split.equalAfterHealMs).not.toBeNull()
    expect(split.equalAfterHealMs!).toBeLessThan(10_000)
    expect(crdt.splitConvergenceMs!.max).toBeGreaterThan(1_000)
    // Nobody reachable was declared dead: the split's deaths are across it.
    expect(figures(sim, 0, null).falseDeaths).toBe(0)
  })

  it('detects a kill -9 (its connections close, its port refuses) at once, a silent crash after a probe timeout and an indirect round', () => {
    const closes = figures(run({ nodes: 10, regions: 1, seed: 4, durationS: 200, killTrials: 6, churnPerMin: 0, crashCloses: true }), 0, null).detection
    const silent = figures(run({ nodes: 10, regions: 1, seed: 4, durationS: 200, killTrials: 6, churnPerMin: 0 }), 0, null).detection
    expect(closes.suspectMs!.n).toBeGreaterThanOrEqual(40)
    expect(closes.suspectMs!.p50).toBeLessThan(100)
    expect(silent.suspectMs!.p50).toBeGreaterThan(300)
    expect(closes.deadMs!.p50).toBeLessThan(silent.deadMs!.p50)
  })
})
