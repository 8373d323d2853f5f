/**
 * How client commands (status, mesh, discover, ...) reach a node's HTTP API.
 * The address comes from --api, then METAGRID_API (the same variable the
 * daemon binds from), then the daemon's default, 127.0.0.1:7311.
 */
import { defaultConfig } from '../config/schema.ts'

export class ApiUnreachableError extends Error {
  static override name = 'ApiUnreachableError'
  override name = 'ApiUnreachableError'
}

export class ApiResponseError extends Error {
  static override name = 'ApiResponseError'
  override name = 'ApiResponseError'
  readonly status: number
  readonly code: string
  constructor (status: number, code: string, message: string) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** Client calls wait this long; longer than the API's own DHT timeouts so those answer first. */
const REQUEST_TIMEOUT_MS = 30_000

export function resolveApiUrl (flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const value = flag ?? env.METAGRID_API ?? defaultConfig(env).api
  return (/^https?:\/\//.test(value) ? value : `http://${value}`).replace(/\/+$/, '')
}

export async function requestJson<T> (api: string, path: string, init: RequestInit = {}): Promise<T> {
  let response: Response
  try {
    response = await fetch(`${api}${path}`, { ...init, signal: init.signal ?? AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
  } catch (err) {
    const cause = (err as { cause?: { code?: string, message?: string } }).cause
    throw new ApiUnreachableError(`cannot reach the node's API at ${api}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, { cause: err })
  }
  const text = await response.text()
  let body: unknown
  try {
    body = text === '' ? null : JSON.parse(text)
  } catch {
    throw new ApiResponseError(response.status, 'BAD_RESPONSE', `the API at ${api} answered ${response.status} with something that is not JSON`)
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: string, message?: string } } | null)?.error
    throw new ApiResponseError(response.status, error?.code ?? 'HTTP_ERROR', `${response.status} ${error?.code ?? ''}: ${error?.message ?? text}`.trim())
  }
  return body as T
}
