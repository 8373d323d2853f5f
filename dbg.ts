import { writeFile } from 'node:fs/promises'
import { TestBed, waitFor, getJson } from './test/helpers/daemons.ts'
const bed = new TestBed()
const dir = await bed.tempDir()
const f = `${dir}/c.json`; await writeFile(f, JSON.stringify({ catalog: { ttlMs: 8000, tags: ['a', 'b', 'c'] } }))
const first = await bed.start({ args: ['--config', f] })
const rest = await Promise.all([1,2,3,4,5].map(() => bed.start({ args: ['--config', f, '--bootstrap', first.addrs[0]!] })))
await new Promise(r => setTimeout(r, 30000))
for (const n of [first, ...rest].slice(0, 3)) console.log(n.process.tail.filter(l => l.includes('DEBUG') || l.includes('CATALOG')).slice(-8).map(l => { const j = JSON.parse(l); return j.time.slice(17, 23) + ' ' + j.code + ' ' + (j.ms ?? j.err?.message ?? '') }).join('\n'), '\n--')
await bed.cleanup(); process.exit(0)
