import { Testbed } from './test/testbed/testbed.ts'
import { pickCities } from './test/testbed/geo.ts'
const bed = await Testbed.start({ cities: pickCities(10), env: { METAGRID_PROBES_INTERVAL_MS: '250', METAGRID_TELEMETRY_INTERVAL_MS: '1000' } })
console.log('started', bed.nodes.length)
const idx = new Map(bed.nodes.map(n => [n.peerId, n.index]))
for (let t = 0; t < 8; t++) {
  await new Promise(r => setTimeout(r, 15000))
  const errs: number[] = []; const merrs: number[] = []
  for (const n of bed.nodes) {
    const view = await (await fetch(n.api + '/v1/mesh')).json() as any
    for (const p of view.peers) {
      const j = idx.get(p.peerId)!; const truth = bed.rttMs(n.index, j)
      if (p.rttEstimateMs != null) errs.push(Math.abs(p.rttEstimateMs - truth) / truth)
      if (p.rttMeasuredMs != null) merrs.push(Math.abs(p.rttMeasuredMs - truth) / truth)
    }
  }
  errs.sort((a,b)=>a-b); merrs.sort((a,b)=>a-b)
  console.log((t+1)*15, 's est n', errs.length, 'median', errs[Math.floor(errs.length/2)]?.toFixed(3), 'p90', errs[Math.floor(errs.length*0.9)]?.toFixed(3), '| measured median', merrs[Math.floor(merrs.length/2)]?.toFixed(3), 'p90', merrs[Math.floor(merrs.length*0.9)]?.toFixed(3))
}
const v = await (await fetch(bed.nodes[0]!.api + '/v1/mesh')).json() as any
console.log(v.peers.map((p: any) => [idx.get(p.peerId), p.state, p.rttEstimateMs, p.rttMeasuredMs, bed.rttMs(0, idx.get(p.peerId)!).toFixed(1)]))
await bed.stop()
process.exit(0)
