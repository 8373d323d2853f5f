/**
 * A seeded generator (sfc32, seeded through splitmix32): the simulator's
 * only source of randomness, so a seed names a run.
 */
export type Random = () => number

function splitmix32 (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x9e3779b9) >>> 0
    let z = state
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
    return (z ^ (z >>> 16)) >>> 0
  }
}

export function seeded (seed: number): Random {
  const mix = splitmix32(seed)
  let a = mix()
  let b = mix()
  let c = mix()
  let d = mix()
  return () => {
    const t = (((a + b) >>> 0) + d) >>> 0
    d = (d + 1) >>> 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) >>> 0
    c = (c << 21) | (c >>> 11)
    c = (c + t) >>> 0
    return t / 4294967296
  }
}

/** An independent stream derived from `random`: one per node, so adding a node does not reshuffle the others. */
export function fork (random: Random): Random {
  return seeded(Math.floor(random() * 4294967296))
}

export function pick<T> (items: readonly T[], random: Random): T {
  return items[Math.floor(random() * items.length)]!
}
