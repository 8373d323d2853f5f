/**
 * Command-line parsing shared by the commands: node's own parseArgs, strict,
 * with its errors turned into one line and exit code 2.
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util'

export class UsageError extends Error {
  static override name = 'UsageError'
  override name = 'UsageError'
}

export type ParsedValue = string | boolean | Array<string | boolean> | undefined

export interface ParsedCommandLine {
  values: Record<string, ParsedValue>
  positionals: string[]
}

export function parseCommandLine (command: string, args: string[], options: ParseArgsOptionsConfig, maxPositionals = 0): ParsedCommandLine {
  let parsed
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true })
  } catch (err) {
    throw new UsageError(`usage error: metagrid ${command}: ${(err as Error).message.split(/\n|\. To specify/)[0] ?? ''} (see metagrid help)`)
  }
  if (parsed.positionals.length > maxPositionals) {
    throw new UsageError(`usage error: metagrid ${command}: unexpected argument ${JSON.stringify(parsed.positionals[maxPositionals])} (see metagrid help)`)
  }
  return { values: parsed.values as Record<string, ParsedValue>, positionals: parsed.positionals }
}

export function stringValue (value: ParsedValue): string | undefined {
  return typeof value === 'string' ? value : undefined
}
