/**
 * `metagrid discover [--need TAG]... [--model NAME] [--region CODE] [--max-cost X] [--limit K] [--json]`
 *
 * Asks the local node's API (`--api`), or, with `--bootstrap MULTIADDR`, joins
 * the mesh itself as a light client (no daemon, no data directory).
 */
import { CatalogClient } from '../../p2p/catalog/client.ts'
import { discoverQuerySchema } from '../api/routes/catalog.ts'
import { requestJson, resolveApiUrl } from '../cli/api-client.ts'
import { renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue, UsageError } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'
import type { DiscoveryAnswer, DiscoveryQuery } from '../../p2p/catalog/discovery.ts'

function toQuery (values: Record<string, unknown>): DiscoveryQuery {
  const parsed = discoverQuerySchema.safeParse({
    need: values.need ?? [],
    ...(values.model != null ? { model: values.model } : {}),
    ...(values.region != null ? { region: values.region } : {}),
    ...(values['max-cost'] != null ? { maxCost: values['max-cost'] } : {}),
    ...(values.currency != null ? { currency: values.currency } : {}),
    ...(values.limit != null ? { limit: values.limit } : {})
  })
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const flag = String(issue?.path[0] ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
    throw new UsageError(`usage error: metagrid discover: --${flag}: ${issue?.message ?? 'invalid'}`)
  }
  const q = parsed.data
  return {
    need: q.need,
    currency: q.currency,
    limit: q.limit,
    ...(q.model != null ? { model: q.model } : {}),
    ...(q.region != null ? { region: q.region } : {}),
    ...(q.maxCost != null ? { maxCost: q.maxCost } : {})
  }
}

function searchParams (query: DiscoveryQuery): string {
  const params = new URLSearchParams()
  for (const tag of query.need) params.append('need', tag)
  if (query.model != null) params.set('model', query.model)
  if (query.region != null) params.set('region', query.region)
  if (query.maxCost != null) params.set('maxCost', String(query.maxCost))
  params.set('currency', query.currency)
  params.set('limit', String(query.limit))
  return params.toString()
}

export async function discoverCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('discover', args, {
    need: { type: 'string', multiple: true },
    model: { type: 'string' },
    region: { type: 'string' },
    'max-cost': { type: 'string' },
    currency: { type: 'string' },
    limit: { type: 'string' },
    json: { type: 'boolean' },
    api: { type: 'string' },
    bootstrap: { type: 'string', multiple: true }
  })
  const query = toQuery(values)
  const bootstrap = (values.bootstrap as string[] | undefined) ?? []
  let answer: DiscoveryAnswer
  if (bootstrap.length > 0) {
    const client = await CatalogClient.connect({ bootstrap })
    try {
      answer = await client.discover(query)
    } finally {
      await client.close()
    }
  } else {
    answer = await requestJson<DiscoveryAnswer>(resolveApiUrl(stringValue(values.api), io.env), `/v1/discover?${searchParams(query)}`)
  }

  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(answer, null, 2)}\n`)
    return ExitCode.OK
  }
  if (answer.note != null) io.stdout.write(`${answer.note.code}: ${answer.note.message}\n`)
  io.stdout.write(`${answer.results.length} of ${answer.candidates} candidate${answer.candidates === 1 ? '' : 's'} (first answer ${answer.timings.firstMs ?? '-'} ms, complete ${answer.timings.completeMs} ms)\n\n`)
  io.stdout.write(renderTable(
    ['#', 'peer', 'rtt', 'load', 'cost/h', 'region', 'cpu', 'accelerators', 'models'],
    answer.results.map((result, i) => {
      const d = result.descriptor
      return [
        String(i + 1),
        result.peerId,
        result.rank.rttMs == null ? '?' : `${Math.round(result.rank.rttMs)}ms ${result.rank.rttSource}`,
        result.rank.load == null ? '-' : `${Math.round(result.rank.load * 100)}%`,
        `${result.rank.cost} ${result.rank.currency}`,
        d.region ?? '-',
        `${d.cpu.cores}x ${d.cpu.arch}`,
        d.accelerators.map((a) => `${a.count}x ${a.model}`).join(', ') || '-',
        d.models.map((m) => m.name).join(', ') || '-'
      ]
    })
  ))
  return ExitCode.OK
}
