/**
 * Measures this machine's load for the next report: CPU utilisation over the
 * interval since the last sample (all cores), memory in use, and the counts
 * other parts of the node supply (queue length, hosted shards, accelerators).
 */
import { cpus, freemem, totalmem } from 'node:os'
import type { LoadReport } from './load-report.ts'

export type LoadFigures = Pick<LoadReport, 'cpu' | 'memory' | 'accelerators' | 'queue' | 'shards'>

export interface LoadSources {
  /** Requests waiting or in flight. */
  queueLength: () => number
  hostedShards: () => number
  accelerators: () => LoadReport['accelerators']
}

export const noLoadSources: LoadSources = {
  queueLength: () => 0,
  hostedShards: () => 0,
  accelerators: () => ({ utilisation: 0, free: 0, total: 0 })
}

function cpuTimes (): { idle: number, total: number } {
  let idle = 0
  let total = 0
  for (const cpu of cpus()) {
    idle += cpu.times.idle
    total += cpu.times.user + cpu.times.nice + cpu.times.sys + cpu.times.irq + cpu.times.idle
  }
  return { idle, total }
}

export class LoadSampler {
  private previous = cpuTimes()
  private readonly sources: LoadSources

  constructor (sources: Partial<LoadSources> = {}) {
    this.sources = { ...noLoadSources, ...sources }
  }

  sample (): LoadFigures {
    const now = cpuTimes()
    const total = now.total - this.previous.total
    const idle = now.idle - this.previous.idle
    this.previous = now
    return {
      cpu: total > 0 ? Math.min(1, Math.max(0, 1 - idle / total)) : 0,
      memory: 1 - freemem() / totalmem(),
      accelerators: this.sources.accelerators(),
      queue: this.sources.queueLength(),
      shards: this.sources.hostedShards()
    }
  }
}
