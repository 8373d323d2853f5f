/**
 * `metagrid slo [--api URL] [--json]`: each objective, its current value over
 * the window, the error budget left and the burn rate, and whether
 * decorative work is being shed.
 */
import { requestJson, resolveApiUrl } from '../cli/api-client.ts'
import { renderTable } from '../cli/table.ts'
import { parseCommandLine, stringValue } from '../cli/usage.ts'
import { ExitCode, type ExitCodeValue } from '../exit-codes.ts'
import type { CommandIO } from '../cli/io.ts'
import type { SloReport } from '../slo.ts'

const percent = (x: number | null, digits = 2): string => (x == null ? '-' : `${(x * 100).toFixed(digits)}%`)

export async function sloCommand (args: string[], io: CommandIO): Promise<ExitCodeValue> {
  const { values } = parseCommandLine('slo', args, { api: { type: 'string' }, json: { type: 'boolean' } })
  const report = await requestJson<SloReport>(resolveApiUrl(stringValue(values.api), io.env), '/v1/slo')
  if (values.json === true) {
    io.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
    return ExitCode.OK
  }
  io.stdout.write(`window ${Math.round(report.windowMs / 60_000)} min, burn rate over ${Math.round(report.burnWindowMs / 60_000)} min\n\n`)
  io.stdout.write(renderTable(
    ['objective', 'target', 'current', 'events', 'budget left', 'burn rate', 'status'],
    report.objectives.map((o) => [o.description, percent(o.target, 1), percent(o.sli), String(o.total), percent(Number.isFinite(o.budgetRemaining) ? o.budgetRemaining : -1, 0), `${o.burnRate}×`, o.status])
  ))
  for (const breaker of report.breakers) {
    io.stdout.write(`\nbreaker ${breaker.name}: ${breaker.open ? `OPEN since ${new Date(breaker.since!).toISOString()} (${breaker.reason ?? ''})` : 'closed'}\n`)
  }
  return ExitCode.OK
}
