/**
 * Shared pieces of the benchmarks: machine description, statistics, process
 * memory. Benchmarks print JSON and write it to test/perf/results/<name>.json;
 * they never assert on time.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { cpus, release, totalmem } from 'node:os'
import { join } from 'node:path'

export const RESULTS_DIR = new URL('./results/', import.meta.url).pathname

export interface BenchResult {
  bench: string
  machine: Record<string, unknown>
  startedAt: string
  figures: Record<string, unknown>
}

export function machine (): Record<string, unknown> {
  const cpu = cpus()
  return {
    cpu: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version
  }
}

export function quantile (values: number[], q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const position = (sorted.length - 1) * q
  const low = Math.floor(position)
  const high = Math.ceil(position)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (position - low)
}

export function summary (values: number[], digits = 1): { n: number, min: number, p50: number, p90: number, p99: number, max: number, mean: number } {
  const round = (x: number): number => Number(x.toFixed(digits))
  return {
    n: values.length,
    min: round(Math.min(...values)),
    p50: round(quantile(values, 0.5)),
    p90: round(quantile(values, 0.9)),
    p99: round(quantile(values, 0.99)),
    max: round(Math.max(...values)),
    mean: round(values.reduce((a, b) => a + b, 0) / values.length)
  }
}

/** Resident set size of a process in MiB, from /proc (Linux). */
export async function rssMiB (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kib = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? Number.NaN)
  return Number((kib / 1024).toFixed(1))
}

/** CPU time (user + system) a process has used, in seconds, from /proc (Linux). */
export async function cpuSeconds (pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')
  // utime and stime are fields 14 and 15 of stat, in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100
}

export async function writeResult (bench: string, figures: Record<string, unknown>): Promise<BenchResult> {
  const result: BenchResult = { bench, machine: machine(), startedAt: new Date().toISOString(), figures }
  await writeFile(join(RESULTS_DIR, `${bench}.json`), `${JSON.stringify(result, null, 2)}\n`)
  return result
}

export const sleep = async (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
