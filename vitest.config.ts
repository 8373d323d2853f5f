import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    // The JSON report is what .ci/run counts, so a run that executed no test is visible.
    reporters: ['default', 'json'],
    outputFile: { json: 'reports/vitest.json' },
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000
        }
      },
      {
        extends: true,
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          // Real daemons and meshes: one file at a time on a 2-core machine, so timing-sensitive
          // protocols (gossip heartbeats, failure detection) are not starved by a neighbour file.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 120_000
        }
      }
    ]
  }
})
