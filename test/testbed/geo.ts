/**
 * Latency from geography: the RTT between two cities is the great-circle
 * distance at the speed of light in fibre (about 200 km per ms, one way),
 * there and back, plus a fixed last-mile term for the access links.
 */
import cities from './cities.json' with { type: 'json' }

export interface City {
  name: string
  lat: number
  lon: number
}

export const CITIES: City[] = cities

/** Mean Earth radius, km. */
const EARTH_RADIUS_KM = 6371
/** Light in fibre covers about two thirds of c: 200 km per millisecond. */
export const FIBRE_KM_PER_MS = 200
/** Access links at both ends, round trip. */
export const LAST_MILE_RTT_MS = 4

export function greatCircleKm (a: City, b: City): number {
  const rad = Math.PI / 180
  const dLat = (b.lat - a.lat) * rad
  const dLon = (b.lon - a.lon) * rad
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLon / 2) ** 2
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)))
}

export function rttMs (a: City, b: City): number {
  if (a.name === b.name) return LAST_MILE_RTT_MS
  return 2 * greatCircleKm(a, b) / FIBRE_KM_PER_MS + LAST_MILE_RTT_MS
}

/** The RTT matrix for a list of cities, ms. */
export function latencyMatrix (places: City[]): number[][] {
  return places.map((a) => places.map((b) => rttMs(a, b)))
}

export function pickCities (count: number): City[] {
  if (count > CITIES.length) throw new Error(`only ${CITIES.length} cities in the fixture, asked for ${count}`)
  return CITIES.slice(0, count)
}
