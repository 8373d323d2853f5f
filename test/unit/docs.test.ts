/**
 * The README is the user's entry; these checks keep its reference tables in
 * step with the code they describe.
 */
import { readFile } from 'node:fs/promises'
import { describe, expect, it } from 'vitest'
import { configLeaves } from '../../daemon/config/env.ts'
import { configSchema } from '../../daemon/config/schema.ts'
import { START_FLAGS } from '../../daemon/commands/start.ts'
import { ExitCode } from '../../daemon/exit-codes.ts'
import { Metrics } from '../../daemon/metrics.ts'

const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')

describe('README', () => {
  it('documents every config key with its environment variable', () => {
    // A row may document a group of sibling keys together (`catalog.geo.lat`, `catalog.geo.lon`).
    const rows = readme.split('\n').filter((line) => line.startsWith('| `'))
    for (const leaf of configLeaves(configSchema)) {
      const row = rows.find((line) => line.split(' | ')[0]!.includes(`\`${leaf.path.join('.')}\``))
      expect(row, `README row for ${leaf.path.join('.')}`).toBeDefined()
      expect(row).toContain(`\`${leaf.env}\``)
    }
  })

  it('lists every metagrid metric in the catalog, and every alert in the runbook', async () => {
    const names = (new Metrics().registry.getMetricsAsArray() as Array<{ name: string }>).map((m) => m.name).filter((n) => n.startsWith('metagrid_'))
    expect(names.length).toBeGreaterThan(30)
    for (const name of names) expect(readme, name).toMatch(new RegExp(`^\\| \`${name}\` \\|`, 'm'))
    const alerts = [...(await readFile(new URL('../../daemon/alerts.yml', import.meta.url), 'utf8')).matchAll(/- alert: (\w+)/g)].map((m) => m[1]!)
    expect(alerts.length).toBeGreaterThan(5)
    for (const alert of alerts) expect(readme, alert).toContain(`**${alert}**`)
  })

  it('documents every warning and error code the daemon logs', async () => {
    const { readdir } = await import('node:fs/promises')
    const root = new URL('../../', import.meta.url)
    const codes = new Set<string>()
    for (const dir of ['daemon', 'p2p', 'storage', 'attest']) {
      for (const file of await readdir(new URL(dir, root), { recursive: true })) {
        if (!file.endsWith('.ts')) continue
        const text = await readFile(new URL(`${dir}/${file}`, root), 'utf8')
        for (const m of text.matchAll(/\.(?:warn|error|fatal)\(\{ code: '([A-Z_]+)'/g)) codes.add(m[1]!)
      }
    }
    expect(codes.size).toBeGreaterThan(15)
    for (const code of codes) expect(readme, code).toMatch(new RegExp(`^\\| \`${code}\` \\|`, 'm'))
  })

  it('documents every start flag', () => {
    for (const flag of Object.keys(START_FLAGS)) expect(readme).toContain(`--${flag}`)
  })

  it('documents every exit code', () => {
    for (const code of Object.values(ExitCode)) expect(readme).toMatch(new RegExp(`^\\| ${code} \\| `, 'm'))
  })

  it('gives the two set-up commands and the test command', () => {
    expect(readme).toMatch(/```sh\nnpm install\nnpm start\n```/)
    expect(readme).toMatch(/```sh\nnpm test\n```/)
  })
})
