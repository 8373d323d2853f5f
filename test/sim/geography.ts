/**
 * Where the simulated nodes are: regions anchored at the testbed's real
 * cities (test/testbed/cities.json), nodes scattered around their region's
 * anchor, and the RTT between two nodes from geography as the testbed's
 * model computes it (great circle at the speed of light in fibre, plus each
 * end's access link).
 */
import { CITIES, FIBRE_KM_PER_MS } from '../testbed/geo.ts'
import type { Random } from './rng.ts'

const EARTH_RADIUS_KM = 6371
/** How far a node sits from its region's anchor, at most, in degrees (about 300 km): a metro area and its surroundings. */
const NODE_SPREAD_DEG = 3
/** A region beyond the 32 cities is a neighbour of one, this far off in degrees: a second metro of the same country or a nearby one. */
const EXTRA_REGION_OFFSET_DEG = 6
/** Access link, one node's share of a round trip, ms: fibre to the home at 1 ms, a busy cable or DSL line at 3. */
const ACCESS_RTT_MIN_MS = 1
const ACCESS_RTT_SPAN_MS = 2

export interface Place {
  lat: number
  lon: number
}

export interface RegionSite extends Place {
  code: string
  city: string
}

export interface Site extends Place {
  /** Unit vector on the sphere, for a cheap great-circle distance. */
  x: number
  y: number
  z: number
  accessMs: number
}

function unit (lat: number, lon: number): [number, number, number] {
  const rad = Math.PI / 180
  const c = Math.cos(lat * rad)
  return [c * Math.cos(lon * rad), c * Math.sin(lon * rad), Math.sin(lat * rad)]
}

/** `count` regions: the cities in order, then neighbours of them. Codes fit the region syntax (`FR-0`). */
export function regionSites (count: number, random: Random): RegionSite[] {
  const out: RegionSite[] = []
  for (let i = 0; i < count; i++) {
    const city = CITIES[i % CITIES.length]!
    const extra = i >= CITIES.length
    const lat = extra ? clampLat(city.lat + (random() * 2 - 1) * EXTRA_REGION_OFFSET_DEG) : city.lat
    const lon = extra ? city.lon + (random() * 2 - 1) * EXTRA_REGION_OFFSET_DEG : city.lon
    const letters = city.name.toUpperCase().replace(/[^A-Z]/g, '').slice(0, 2)
    out.push({ code: `${letters}-${i}`, city: city.name, lat, lon })
  }
  return out
}

export function siteNear (anchor: Place, random: Random): Site {
  const lat = clampLat(anchor.lat + (random() * 2 - 1) * NODE_SPREAD_DEG)
  const lon = anchor.lon + (random() * 2 - 1) * NODE_SPREAD_DEG
  const [x, y, z] = unit(lat, lon)
  return { lat, lon, x, y, z, accessMs: ACCESS_RTT_MIN_MS + random() * ACCESS_RTT_SPAN_MS }
}

/** Round trip between two sites, ms. */
export function siteRtt (a: Site, b: Site): number {
  const dot = Math.min(1, Math.max(-1, a.x * b.x + a.y * b.y + a.z * b.z))
  const km = EARTH_RADIUS_KM * Math.acos(dot)
  return 2 * km / FIBRE_KM_PER_MS + a.accessMs + b.accessMs
}

function clampLat (lat: number): number {
  return Math.max(-80, Math.min(80, lat))
}
