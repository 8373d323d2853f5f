/**
 * The world client SDK for browsers: `client/world-client.ts` and what it
 * imports, bundled by esbuild into one ES module (about 44 KB minified). The
 * daemon builds it in memory the first time `/client.js` is asked for, from
 * the sources it runs, so the page and the SDK it loads are always the same
 * version and no build step comes before `npm start`. `npm run build:client`
 * writes the same file for a world's own pages:
 * `node daemon/world/bundle.ts dist/metagrid-client.js`.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const ENTRY = fileURLToPath(new URL('../../client/world-client.ts', import.meta.url))

let built: Promise<Uint8Array> | undefined

/** The bundle, built once per process; a failed build is tried again on the next call. */
export async function clientBundle (): Promise<Uint8Array> {
  built ??= build().catch((err: unknown) => {
    built = undefined
    throw err
  })
  return built
}

async function build (): Promise<Uint8Array> {
  const esbuild = await import('esbuild')
  const result = await esbuild.build({
    entryPoints: [ENTRY],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    write: false,
    logLevel: 'silent',
    legalComments: 'none'
  })
  // esbuild keeps a service process for later builds; there are none.
  await esbuild.stop()
  return result.outputFiles[0]!.contents
}

if (import.meta.main) {
  const out = process.argv[2] ?? 'dist/metagrid-client.js'
  await mkdir(dirname(out), { recursive: true })
  const bytes = await clientBundle()
  await writeFile(out, bytes)
  console.log(`${out}: ${bytes.byteLength} bytes`)
}
