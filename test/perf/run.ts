/**
 * `npm run bench [name...]`: runs the benchmarks in test/perf/*.bench.ts (all,
 * or those named), prints each result as JSON and writes it to
 * test/perf/results/<name>.json.
 */
import { readdir } from 'node:fs/promises'
import { writeResult } from './harness.ts'

const dir = new URL('./', import.meta.url)
const available = (await readdir(dir)).filter((file) => file.endsWith('.bench.ts')).map((file) => file.replace(/\.bench\.ts$/, '')).sort()
const wanted = process.argv.slice(2)
const unknown = wanted.filter((name) => !available.includes(name))
if (unknown.length > 0) {
  process.stderr.write(`unknown bench ${unknown.join(', ')}; available: ${available.join(', ')}\n`)
  process.exit(2)
}

for (const name of wanted.length > 0 ? wanted : available) {
  process.stderr.write(`bench ${name}...\n`)
  const module = await import(new URL(`./${name}.bench.ts`, dir).href) as { run: () => Promise<Record<string, unknown>> }
  const result = await writeResult(name, await module.run())
  process.stdout.write(`${JSON.stringify(result)}\n`)
}
process.exit(0)
