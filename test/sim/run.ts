/**
 * `npm run sim -- --nodes 10000 --regions 40 --seed 1 --duration 600`
 *
 * Runs the simulator, prints a progress line every few seconds on stderr,
 * the figures as JSON on stdout (or into `--out FILE`), and the map and
 * time-series pictures beside it (`--pictures BASE`, default
 * `sim-<nodes>-<regions>-<seed>` in the working directory; `--no-pictures`
 * for none).
 */
import { writeFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { Simulator } from './simulator.ts'
import { figures, mapSvg, seriesSvg, writePictures } from './report.ts'

const USAGE = 'usage: npm run sim -- [--nodes N] [--regions R] [--seed S] [--duration SECONDS] [--shards-per-region K] [--churn SHARE_PER_MIN] [--loss P] [--telemetry-ms MS] [--gossip-factor F] [--kill-trials N] [--crash-closes] [--spread-over CITIES] [--no-faults] [--out FILE] [--pictures BASE | --no-pictures]'

function int (name: string, value: string | undefined, fallback: number, min: number, max: number): number {
  if (value == null) return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in [${min}, ${max}], got ${value}`)
  return n
}

function fraction (name: string, value: string | undefined, fallback: number): number {
  if (value == null) return fallback
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new Error(`--${name} must be a number in [0, 1], got ${value}`)
  return n
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      nodes: { type: 'string' },
      regions: { type: 'string' },
      seed: { type: 'string' },
      duration: { type: 'string' },
      'shards-per-region': { type: 'string' },
      churn: { type: 'string' },
      loss: { type: 'string' },
      'telemetry-ms': { type: 'string' },
      'gossip-factor': { type: 'string' },
      'kill-trials': { type: 'string' },
      'crash-closes': { type: 'boolean' },
      'spread-over': { type: 'string' },
      'no-faults': { type: 'boolean' },
      out: { type: 'string' },
      pictures: { type: 'string' },
      'no-pictures': { type: 'boolean' },
      help: { type: 'boolean' }
    },
    strict: true
  })
  if (values.help === true) {
    process.stdout.write(USAGE + '\n')
    return
  }
  const nodes = int('nodes', values.nodes, 1_000, 1, 100_000)
  const regions = int('regions', values.regions, 10, 1, 1_000)
  if (nodes < regions) throw new Error(`--nodes (${nodes}) must be at least --regions (${regions})`)
  const seed = int('seed', values.seed, 1, 0, 2 ** 32 - 1)
  const sim = new Simulator({
    nodes,
    regions,
    seed,
    durationS: int('duration', values.duration, 600, 10, 86_400),
    shardsPerRegion: int('shards-per-region', values['shards-per-region'], 32, 1, 10_000),
    churnPerMin: fraction('churn', values.churn, 0.01),
    lossRate: fraction('loss', values.loss, 0.001),
    telemetryMs: int('telemetry-ms', values['telemetry-ms'], 5_000, 100, 600_000),
    gossipFactor: fraction('gossip-factor', values['gossip-factor'], 0.25),
    killTrials: int('kill-trials', values['kill-trials'], 20, 0, 10_000),
    crashCloses: values['crash-closes'] === true,
    spreadOver: int('spread-over', values['spread-over'], 0, 0, 1_000),
    faults: values['no-faults'] !== true,
    progress: (line) => process.stderr.write(line + '\n')
  })
  const cpu = process.cpuUsage()
  sim.run()
  const used = process.cpuUsage(cpu)
  const gc = (globalThis as { gc?: () => void }).gc
  gc?.()
  const heap = gc == null ? null : process.memoryUsage().heapUsed
  const result = figures(sim, (used.user + used.system) / 1_000, heap)
  const json = JSON.stringify(result, null, 2)
  if (values.out != null) await writeFile(values.out, json + '\n')
  else process.stdout.write(json + '\n')
  if (values['no-pictures'] !== true) {
    const files = await writePictures(values.pictures ?? `sim-${nodes}-${regions}-${seed}`, mapSvg(sim), seriesSvg(result))
    process.stderr.write(`pictures: ${files.join(', ')}\n`)
  }
}

main().catch((err: Error) => {
  process.stderr.write(`sim: ${err.message}\n${USAGE}\n`)
  process.exitCode = 2
})
