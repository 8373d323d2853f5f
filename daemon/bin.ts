#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * Executable entry point. Runs on Node 24 or later: `npm start`, `npm run` and
 * `npx metagrid` put the pinned runtime from the `node` package first on PATH.
 */
import { bufferSignals } from './signals.ts'

// Before anything heavy loads: see signals.ts.
bufferSignals()

const major = Number(process.versions.node.split('.')[0])
if (major < 24) {
  process.stderr.write(`metagrid needs Node.js 24 or later, this is ${process.version}; run it through npm start or npx metagrid, which use the pinned runtime\n`)
  process.exit(2)
}

try {
  const { main } = await import('./cli.ts')
  const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env })
  // Exit explicitly: a stopped libp2p node can leave timers that would keep the process alive for seconds.
  process.exit(code)
} catch (err) {
  process.stderr.write(`fatal: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
}
