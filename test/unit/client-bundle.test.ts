/**
 * The browser bundle of the world SDK builds from the sources, for the
 * browser platform (esbuild refuses a Node built-in there), and exports the
 * client.
 */
import { describe, expect, it } from 'vitest'
import { clientBundle } from '../../daemon/world/bundle.ts'

describe('browser bundle', () => {
  it('builds one ES module with WorldClient and no Node built-in', async () => {
    const bundle = Buffer.from(await clientBundle()).toString('utf8')
    expect(bundle.length).toBeGreaterThan(10_000)
    expect(bundle).toMatch(/export\s*\{[^}]*WorldClient/)
    expect(bundle).not.toMatch(/from\s*"node:/)
  })
})
