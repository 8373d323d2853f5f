import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

// Node runs the TypeScript sources by stripping types, which checks nothing; this is where the types are checked.
describe('typescript', () => {
  it('type-checks the whole project under strict settings', async () => {
    const result = await promisify(execFile)('node_modules/.bin/tsc', ['-p', '.'], { cwd: new URL('../..', import.meta.url).pathname }).catch((err: { stdout: string }) => err)
    expect(result.stdout).toBe('')
  })
})
