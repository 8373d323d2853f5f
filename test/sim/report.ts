/**
 * The simulator's figures as JSON, and two pictures an operator can look
 * at: the world map with regions, nodes and shard hosts, and the time series
 * of the figures (SVG, and PNG when Chromium is there to draw it).
 */
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { quantiles, type Sample } from './recorder.ts'
import type { Simulator } from './simulator.ts'

export interface SimFigures {
  options: Record<string, unknown>
  wallS: number
  speedup: number
  events: number
  nodesAlive: number
  perNode: {
    bytesOutPerS: ReturnType<typeof quantiles>
    bytesInPerS: ReturnType<typeof quantiles>
    /** Mean bytes sent per node per second by what they carried: probes, load reports, membership claims, IHAVE gossip, region summaries. */
    sentByKind: Record<string, number>
    windowS: number
    /** Entries of protocol state a node holds: members tracked, load reports (one per region member), region summaries. */
    stateEntries: number
    membersTracked: number
    /** Process heap after a full GC, divided by the nodes: an upper bound on the protocol cores' memory per node. */
    heapBytesPerNode: number | null
    /** The sim's process CPU per node per simulated second: an upper bound on the cores' CPU. */
    cpuMsPerNodePerS: number
    /** One region's placement (its shards over its scope's candidates), as each of its members computes it. */
    placementMs: ReturnType<typeof quantiles>
  }
  /** The flat alternative, computed once on the same nodes: every shard over every node. */
  flatPlacementMs: number
  failoverMs: ReturnType<typeof quantiles>
  /** Kill → suspect and → dead on each other member of the victim's region (the mesh bench's figure on real daemons). */
  detection: { suspectMs: ReturnType<typeof quantiles>, deadMs: ReturnType<typeof quantiles> }
  failoverUndetected: number
  failoverReturnedFirst: number
  agreementMs: ReturnType<typeof quantiles>
  falseSuspicions: number
  falseDeaths: number
  /** A split region's halves doubting each other in the minute after the heal, until each member refutes. */
  afterSplitHeal: { suspicions: number, deaths: number }
  coordinateError: { intraAndInterP50: number, interP50: number } | null
  homeShare: { min: number, final: number } | null
  load: { max: number, mean: number } | null
  regionLostRehomeS: number | null
  /** The tracked CRDT shards (crdt-model.ts): convergence of writes, and each partition's divergence and heal. */
  crdt: {
    shards: number
    writes: number
    /** Write → every alive replica holds it, for writes outside a partition. */
    convergenceMs: ReturnType<typeof quantiles>
    /** The same for writes made in a split region while split: they wait for the heal. */
    splitConvergenceMs: ReturnType<typeof quantiles>
    /** Anti-entropy sessions run, and the bytes of deltas and sessions per tracked shard per second. */
    sessions: number
    deltaBytesPerShardPerS: number
    syncBytesPerShardPerS: number
    partitions: Array<{ event: string, region: string, durationS: number | null, writes: number, maxDivergentEntities: number, maxDivergentShards: number, shards: number, equalAfterHealMs: number | null }>
  } | null
  marks: Array<{ t: number, event: string, region: string }>
  samples: Sample[]
}

export function figures (sim: Simulator, cpuMs: number, heapBytes: number | null): SimFigures {
  const rec = sim.recorder
  const bw = rec.bandwidth()
  const alive = sim.nodes.filter((n) => n.alive)
  const probe = alive.slice(0, 200)
  const members = probe.reduce((s, n) => s + n.swim.list().length, 0) / Math.max(1, probe.length)
  const regionSize = sim.aliveCount() / Math.max(1, sim.regions.filter((r) => r.members.size > 0).length)
  const last = rec.samples.at(-1)
  const settled = rec.samples.filter((s) => s.t * 1_000 >= sim.options.durationS * 1_000 * 0.1)
  const durationS = sim.options.durationS
  const { progress: _, ...options } = sim.options
  return {
    options,
    wallS: rec.wallMs / 1_000,
    speedup: durationS / (rec.wallMs / 1_000),
    events: sim.events,
    nodesAlive: alive.length,
    perNode: {
      bytesOutPerS: quantiles(bw.out),
      bytesInPerS: quantiles(bw.in),
      sentByKind: rec.sentByKind(),
      windowS: bw.windowS,
      stateEntries: Math.round(members + regionSize + sim.summaries.size),
      membersTracked: Math.round(members),
      heapBytesPerNode: heapBytes == null ? null : Math.round(heapBytes / sim.nodes.length),
      cpuMsPerNodePerS: cpuMs / sim.nodes.length / durationS,
      placementMs: quantiles(rec.placementMs)
    },
    flatPlacementMs: sim.placeFlat(),
    failoverMs: quantiles(rec.failoverMs),
    detection: { suspectMs: quantiles(rec.suspectMs), deadMs: quantiles(rec.deadMs) },
    failoverUndetected: rec.undetected,
    failoverReturnedFirst: rec.returnedFirst,
    agreementMs: quantiles(rec.agreementMs),
    falseSuspicions: rec.falseSuspicions,
    falseDeaths: rec.falseDeaths,
    afterSplitHeal: { suspicions: rec.healSuspicions, deaths: rec.healDeaths },
    coordinateError: last == null ? null : { intraAndInterP50: last.coordinateErrorP50, interP50: last.coordinateErrorInterP50 },
    homeShare: settled.length === 0 ? null : { min: Math.min(...settled.map((s) => s.homeShare)), final: last!.homeShare },
    load: last == null ? null : { max: Math.max(...settled.map((s) => s.loadMax)), mean: last.loadMean },
    regionLostRehomeS: rec.regionRehomeMs == null ? null : rec.regionRehomeMs / 1_000,
    crdt: crdtFigures(sim),
    marks: rec.marks,
    samples: rec.samples
  }
}

function crdtFigures (sim: Simulator): SimFigures['crdt'] {
  const crdt = sim.crdt
  if (crdt == null) return null
  const trackedS = Math.max(1, sim.options.durationS - Math.max(30, sim.options.durationS * 0.1))
  const perShardPerS = (bytes: number): number => Math.round(bytes / Math.max(1, crdt.shards.length) / trackedS)
  return {
    shards: crdt.shards.length,
    writes: crdt.writes,
    convergenceMs: quantiles(crdt.convergenceMs),
    splitConvergenceMs: quantiles(crdt.splitConvergenceMs),
    sessions: crdt.sessions,
    deltaBytesPerShardPerS: perShardPerS(crdt.deltaBytes),
    syncBytesPerShardPerS: perShardPerS(crdt.syncBytes),
    partitions: sim.recorder.partitions.map((p) => ({
      event: p.event,
      region: sim.regions[p.region]!.site.code,
      durationS: p.healedAt == null ? null : (p.healedAt - p.at) / 1_000,
      writes: p.writes,
      maxDivergentEntities: p.maxDivergentEntities,
      maxDivergentShards: p.maxDivergentShards,
      shards: crdt.shards.filter((s) => s.region === p.region).length,
      equalAfterHealMs: p.equalAfterHealMs
    }))
  }
}

const W = 1000
const H = 500
const x = (lon: number): number => ((lon + 180) / 360) * W
const y = (lat: number): number => ((90 - lat) / 180) * H

/** The world map: regions (grey ring, red when lost, orange while cut), a sample of nodes, shard hosts as larger dots. */
export function mapSvg (sim: Simulator): string {
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H + 40}" font-family="sans-serif" font-size="11">`, `<rect width="${W}" height="${H + 40}" fill="#0b1d2a"/>`]
  for (let lat = -60; lat <= 60; lat += 30) parts.push(`<line x1="0" x2="${W}" y1="${y(lat)}" y2="${y(lat)}" stroke="#183447"/>`)
  for (let lon = -150; lon <= 150; lon += 30) parts.push(`<line y1="0" y2="${H}" x1="${x(lon)}" x2="${x(lon)}" stroke="#183447"/>`)
  const hosts = new Set(sim.regions.flatMap((r) => [...sim.placeRegion(r).hosts.values()]))
  const step = Math.max(1, Math.floor(sim.nodes.length / 4_000))
  for (let i = 0; i < sim.nodes.length; i += step) {
    const n = sim.nodes[i]!
    if (!n.alive) continue
    parts.push(`<circle cx="${x(n.site.lon).toFixed(1)}" cy="${y(n.site.lat).toFixed(1)}" r="1" fill="#5fa8d3" opacity="0.6"/>`)
  }
  for (const id of hosts) {
    const n = sim.nodeOf(id)!
    parts.push(`<circle cx="${x(n.site.lon).toFixed(1)}" cy="${y(n.site.lat).toFixed(1)}" r="2.2" fill="#ffd166"/>`)
  }
  for (const r of sim.regions) {
    const colour = r.lost ? '#ef476f' : r.cut ? '#f78c6b' : '#cfd8dc'
    parts.push(`<circle cx="${x(r.site.lon)}" cy="${y(r.site.lat)}" r="${4 + Math.sqrt(r.members.size) / 2}" fill="none" stroke="${colour}" stroke-width="1.2"/>`)
    parts.push(`<text x="${x(r.site.lon) + 6}" y="${y(r.site.lat) - 6}" fill="${colour}">${r.site.code}</text>`)
  }
  parts.push(`<text x="10" y="${H + 25}" fill="#cfd8dc">${sim.aliveCount()} nodes alive in ${sim.regions.length} regions at t=${(sim.queue.now / 1_000).toFixed(0)} s · blue: nodes (a sample) · yellow: shard hosts · red ring: region lost · orange: partitioned</text>`)
  parts.push('</svg>')
  return parts.join('\n')
}

/** Time series, one small chart per figure, with the fault marks. */
export function seriesSvg (result: SimFigures): string {
  const charts: Array<{ title: string, values: (s: Sample) => number, max?: number }> = [
    { title: 'nodes alive', values: (s) => s.alive },
    { title: 'bytes sent per node per s', values: (s) => s.bytesOutPerNodePerS },
    { title: 'coordinate error p50 (all pairs / across regions)', values: (s) => s.coordinateErrorP50, max: 1 },
    { title: 'share of shards hosted in their home region', values: (s) => s.homeShare, max: 1 },
    { title: 'region load, max', values: (s) => s.loadMax, max: 1 },
    { title: 'members suspected (sum over nodes)', values: (s) => s.suspects }
  ]
  const cw = 480
  const ch = 150
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${2 * cw + 30}" height="${3 * (ch + 40) + 10}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>`]
  const tMax = Math.max(1, ...result.samples.map((s) => s.t))
  charts.forEach((chart, i) => {
    const ox = 10 + (i % 2) * (cw + 10)
    const oy = 10 + Math.floor(i / 2) * (ch + 40)
    const values = result.samples.map(chart.values)
    const vMax = chart.max ?? Math.max(1e-9, ...values) * 1.1
    parts.push(`<text x="${ox}" y="${oy + 12}">${chart.title} (max ${fmt(Math.max(...values, 0))})</text>`)
    parts.push(`<rect x="${ox}" y="${oy + 18}" width="${cw}" height="${ch}" fill="none" stroke="#ccc"/>`)
    for (const mark of result.marks) {
      const mx = ox + (mark.t / 1_000 / tMax) * cw
      parts.push(`<line x1="${mx}" x2="${mx}" y1="${oy + 18}" y2="${oy + 18 + ch}" stroke="#ef476f" stroke-dasharray="3,3"/><text x="${mx + 2}" y="${oy + 30}" fill="#ef476f" font-size="9">${mark.event}</text>`)
    }
    const points = result.samples.map((s, k) => `${(ox + (s.t / tMax) * cw).toFixed(1)},${(oy + 18 + ch - (values[k]! / vMax) * ch).toFixed(1)}`)
    parts.push(`<polyline points="${points.join(' ')}" fill="none" stroke="#118ab2" stroke-width="1.5"/>`)
    if (i === 2) {
      const inter = result.samples.map((s, k) => `${(ox + (s.t / tMax) * cw).toFixed(1)},${(oy + 18 + ch - (s.coordinateErrorInterP50 / vMax) * ch).toFixed(1)}`)
      parts.push(`<polyline points="${inter.join(' ')}" fill="none" stroke="#06d6a0" stroke-width="1.2"/>`)
    }
  })
  parts.push('</svg>')
  return parts.join('\n')
}

function fmt (v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toPrecision(3)
}

/** Writes `<base>.map.svg`, `<base>.series.svg`, and their PNGs when Chromium is installed. Returns the files written. */
export async function writePictures (base: string, map: string, series: string): Promise<string[]> {
  const files = [`${base}.map.svg`, `${base}.series.svg`]
  await writeFile(files[0]!, map)
  await writeFile(files[1]!, series)
  const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
  if (!existsSync(chromiumPath)) return files
  const { chromium } = await import('playwright-core')
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-gpu'] })
  try {
    const page = await browser.newPage()
    for (const [svg, name] of [[map, `${base}.map.png`], [series, `${base}.series.png`]] as const) {
      await page.setContent(`<html><body style="margin:0">${svg}</body></html>`)
      await page.locator('svg').screenshot({ path: name })
      files.push(name)
    }
  } finally {
    await browser.close()
  }
  return files
}
