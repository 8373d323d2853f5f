/**
 * What an operator declares about the node for the capability catalog, as a
 * zod schema the daemon's config embeds: the catalog owns its own settings.
 */
import { z } from 'zod'
import { capabilityTag, nonNegative } from './descriptor.ts'

export const catalogSchema = z.strictObject({
  /** Where the node is, for clients that rank by geography; declared. */
  geo: z.strictObject({ lat: z.number().min(-90).max(90), lon: z.number().min(-180).max(180) }).optional(),
  /** Overrides of what the machine reports about itself (a container may see more cores than it may use). */
  cpu: z.strictObject({ cores: z.int().min(1).optional(), arch: z.string().min(1).max(32).optional(), model: z.string().min(1).max(256).optional() }).optional(),
  memoryMiB: z.int().min(0).optional(),
  storageGiB: z.int().min(0).optional(),
  /** Accelerators the machine cannot report itself (anything but NVIDIA through nvidia-smi); added to the measured ones. */
  accelerators: z.array(z.strictObject({
    kind: z.string().min(1).max(32).default('gpu'),
    model: z.string().min(1).max(128),
    count: z.int().min(1).max(1024).default(1),
    memoryMiB: z.int().min(0).default(0),
    free: z.int().min(0).max(1024).optional()
  })).default([]),
  /** Models this node serves, with the latency profiled on it. */
  models: z.array(z.strictObject({
    name: z.string().min(1).max(128),
    p50Ms: nonNegative,
    p99Ms: nonNegative,
    throughputPerS: nonNegative
  })).default([]),
  cost: z.strictObject({
    currency: z.string().min(1).max(16).default('USD'),
    perCoreHour: nonNegative.default(0),
    perAcceleratorHour: nonNegative.default(0),
    perGiBEgress: nonNegative.default(0)
  }).prefault({}),
  /** Extra capability tags to be found by. */
  tags: z.array(capabilityTag).default([]),
  /** A descriptor and its provider records live this long; they are republished at half of it, so a node that stops drops out within it. */
  ttlMs: z.int().min(2_000).max(86_400_000).default(3_600_000),
  /** Window over which the node states its measured uptime. */
  reliabilityWindowMs: z.int().min(60_000).max(365 * 86_400_000).default(7 * 86_400_000)
})

export type CatalogConfig = z.infer<typeof catalogSchema>
