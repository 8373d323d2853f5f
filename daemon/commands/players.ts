/**
 * `metagrid players --count N --rate HZ [--url WS_URL]... [--duration S]
 * [--radius R] [--speed U] [--layer NAME] [--seed N] [--json]`: simulated
 * players on random walks through the world (world/players.ts), against the
 * nodes at `--url` (world session endpoints, the players spread over them)
 * or, without one, the node at `--api`. A progress line on stderr each
 * second, the report at the end (JSON with `--json`). Exits 1 when an input
 * was lost or applied twice.
 */
import { resolveApiUrl } from '../cli/api-client.ts'
import { renderFields } from '../cli/table.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import { runPlayers } from '../world/players.ts'
import { SESSION_PATH } from '../../client/protocol.ts'
import type { CommandIO } from '../cli/io.ts'

function number (name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (typeof value !== 'string' || !Number.isFinite(n) || n < min || n > max) throw new UsageError(`usage error: metagrid players: --${name} is a number from ${min} to ${max}`)
  return n
}

export async function playersCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('players', args, {
    count: { type: 'string' }, rate: { type: 'string' }, url: { type: 'string', multiple: true }, api: { type: 'string' },
    duration: { type: 'string' }, radius: { type: 'string' }, speed: { type: 'string' }, layer: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' }
  })
  const urls = (values.url as string[] | undefined) ?? [`${resolveApiUrl(stringValue(values.api), io.env).replace(/^http/, 'ws')}${SESSION_PATH}`]
  for (const url of urls) if (!/^wss?:\/\//.test(url)) throw new UsageError(`usage error: metagrid players: --url is a ws:// or wss:// session URL, got ${JSON.stringify(url)}`)
  const options = {
    urls,
    count: number('count', values.count, 10, 1, 10_000),
    rateHz: number('rate', values.rate, 20, 0.1, 120),
    durationMs: number('duration', values.duration, 30, 1, 86_400) * 1000,
    radius: number('radius', values.radius, 100, 0, 1_000_000),
    speed: number('speed', values.speed, 30, 0, 1_000_000),
    layer: stringValue(values.layer) ?? 'physics',
    seed: number('seed', values.seed, 1, 0, 2 ** 32 - 1),
    drainMs: 10_000
  }
  const report = await runPlayers({
    ...options,
    onProgress: (p) => {
      io.stderr.write(`${p.elapsedS.toFixed(0)} s: ${p.connected}/${options.count} connected, ${p.sent} inputs sent, ${p.acknowledged} acknowledged, ${p.pending} pending, ` +
        `input to visible p50 ${p.visibleP50Ms ?? '-'} ms p99 ${p.visibleP99Ms ?? '-'} ms, ${(p.bytesInPerClientPerS / 1000).toFixed(1)} kB/s in per client\n`)
    }
  })
  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
  } else {
    const ms = (s: { p50: number | null, p99: number | null, max: number | null }): string => `p50 ${s.p50 ?? '-'} ms, p99 ${s.p99 ?? '-'} ms, max ${s.max ?? '-'} ms`
    io.stdout.write(renderFields([
      ['players', `${report.players} at ${report.rateHz} Hz for ${report.durationS} s on ${report.nodes} node(s)`],
      ['input to visible', ms(report.inputToVisibleMs)],
      ['input to ack', `${ms(report.ackMs)}; ${report.stalledInputs} over 500 ms`],
      ['per client', `${report.perClient.updatesPerS} updates/s, ${(report.perClient.bytesInPerS / 1000).toFixed(1)} kB/s in, ${(report.perClient.bytesOutPerS / 1000).toFixed(1)} kB/s out`],
      ['inputs', `${report.inputs.sent} sent, ${report.inputs.acknowledged} acknowledged (${report.inputs.duplicates} as duplicates), ${report.inputs.refused} refused, ${report.inputs.lost} lost, ${report.inputs.appliedTwice} applied twice`],
      ['reconnects', String(report.reconnects)]
    ]))
  }
  return report.inputs.lost + report.inputs.appliedTwice > 0 ? ExitCode.FAILURE : ExitCode.OK
}
