/**
 * Builds this node's descriptor from what the machine measured and what the
 * operator declared, and says which is which.
 */
import { CAPABILITY_TYPE, type Accelerator, type CapabilityDescriptor } from './descriptor.ts'
import type { CatalogConfig } from './config.ts'
import type { MeasuredHardware } from './hardware.ts'

export interface DescriptorInputs {
  peerId: string
  operator: string | null
  region: string | undefined
  catalog: CatalogConfig
  hardware: MeasuredHardware
  reliability: { uptime: number, windowS: number }
  addrs: string[]
  version: string
  now: number
}

export function buildDescriptor (inputs: DescriptorInputs): CapabilityDescriptor {
  const { catalog, hardware } = inputs
  const measured = new Set(['cpu', 'memoryMiB', 'storageGiB', 'reliability'])
  const declared = new Set(['cost'])
  const override = (field: string): void => { measured.delete(field); declared.add(field) }

  const cpu = { ...hardware.cpu }
  if (catalog.cpu != null) {
    if (catalog.cpu.cores != null) cpu.cores = catalog.cpu.cores
    if (catalog.cpu.arch != null) cpu.arch = catalog.cpu.arch
    if (catalog.cpu.model != null) cpu.model = catalog.cpu.model
    override('cpu')
  }
  if (catalog.memoryMiB != null) override('memoryMiB')
  if (catalog.storageGiB != null) override('storageGiB')

  const accelerators: Accelerator[] = [
    ...hardware.accelerators.map((a) => ({ ...a, source: 'measured' as const })),
    ...catalog.accelerators.map((a) => ({ kind: a.kind, model: a.model, count: a.count, memoryMiB: a.memoryMiB, free: Math.min(a.free ?? a.count, a.count), source: 'declared' as const }))
  ]
  if (hardware.accelerators.length > 0) measured.add('accelerators')
  if (catalog.accelerators.length > 0) declared.add('accelerators')
  if (inputs.region != null) declared.add('region')
  if (catalog.geo != null) declared.add('geo')
  if (catalog.models.length > 0) declared.add('models')
  if (catalog.tags.length > 0) declared.add('tags')

  return {
    schema: CAPABILITY_TYPE,
    peerId: inputs.peerId,
    operator: inputs.operator,
    region: inputs.region ?? null,
    geo: catalog.geo ?? null,
    cpu,
    memoryMiB: catalog.memoryMiB ?? hardware.memoryMiB,
    storageGiB: catalog.storageGiB ?? hardware.storageGiB,
    accelerators,
    models: catalog.models,
    cost: catalog.cost,
    reliability: { uptime: Math.round(inputs.reliability.uptime * 10_000) / 10_000, windowS: inputs.reliability.windowS },
    software: { name: 'metagrid', version: inputs.version },
    addrs: inputs.addrs.slice(0, 32),
    tags: catalog.tags,
    measured: [...measured].sort(),
    declared: [...declared].sort(),
    issuedAt: inputs.now,
    expiresAt: inputs.now + catalog.ttlMs
  }
}
