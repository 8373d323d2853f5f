/**
 * What this machine has, measured rather than declared: CPU cores, arch and
 * model, memory, free storage under the data directory, and NVIDIA GPUs
 * through `nvidia-smi` when it is installed. A probe that fails (no
 * nvidia-smi, a hung driver) yields nothing for that part, never an error.
 */
import { execFile } from 'node:child_process'
import { statfs } from 'node:fs/promises'
import { arch, availableParallelism, cpus, totalmem } from 'node:os'

export interface MeasuredAccelerator {
  kind: string
  model: string
  count: number
  memoryMiB: number
  free: number
}

export interface MeasuredHardware {
  cpu: { cores: number, arch: string, model: string }
  memoryMiB: number
  storageGiB: number
  accelerators: MeasuredAccelerator[]
}

/** nvidia-smi answers in well under a second; a driver that hangs must not hold up start. */
const NVIDIA_SMI_TIMEOUT_MS = 5_000
/** A GPU this busy (percent) is counted as in use. */
const GPU_BUSY_PERCENT = 10

/** Parses `nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader,nounits`, one GPU per line, grouped by model. */
export function parseNvidiaSmi (output: string): MeasuredAccelerator[] {
  const byModel = new Map<string, MeasuredAccelerator>()
  for (const line of output.split('\n')) {
    const [name, memory, utilisation] = line.split(',').map((field) => field.trim())
    if (name == null || name === '' || memory == null || !/^\d+$/.test(memory)) continue
    const entry = byModel.get(name) ?? { kind: 'gpu', model: name, count: 0, memoryMiB: Number(memory), free: 0 }
    entry.count++
    if (utilisation == null || !/^\d+$/.test(utilisation) || Number(utilisation) < GPU_BUSY_PERCENT) entry.free++
    byModel.set(name, entry)
  }
  return [...byModel.values()]
}

async function nvidiaGpus (): Promise<MeasuredAccelerator[]> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=name,memory.total,utilization.gpu', '--format=csv,noheader,nounits'], { timeout: NVIDIA_SMI_TIMEOUT_MS }, (err, stdout) => {
      resolve(err != null ? [] : parseNvidiaSmi(stdout))
    })
  })
}

async function freeStorageGiB (dir: string): Promise<number> {
  try {
    const stats = await statfs(dir)
    return Math.floor(stats.bavail * stats.bsize / 2 ** 30)
  } catch {
    return 0
  }
}

export async function measureHardware (dataDir: string): Promise<MeasuredHardware> {
  const [storageGiB, accelerators] = await Promise.all([freeStorageGiB(dataDir), nvidiaGpus()])
  return {
    cpu: { cores: availableParallelism(), arch: arch(), model: cpus()[0]?.model.trim() ?? 'unknown' },
    memoryMiB: Math.floor(totalmem() / 2 ** 20),
    storageGiB,
    accelerators
  }
}
