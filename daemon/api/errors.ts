/**
 * Errors the API answers with. Every error leaves as `{ error: { code, message } }`
 * with a bounded `code`; a 5xx never carries a stack trace or internal text.
 */
import type { z } from 'zod'

export class ApiError extends Error {
  static override name = 'ApiError'
  override name = 'ApiError'
  readonly statusCode: number
  readonly code: string
  /** Machine-readable context sent beside the code (for example where a shard's host is). */
  readonly details: Record<string, unknown> | undefined
  constructor (statusCode: number, code: string, message: string, details?: Record<string, unknown>) {
    super(message)
    this.statusCode = statusCode
    this.code = code
    this.details = details
  }
}

export const badRequest = (code: string, message: string): ApiError => new ApiError(400, code, message)
export const notFound = (code: string, message: string): ApiError => new ApiError(404, code, message)

/** Parses request input with a zod schema; the first problem becomes a 400 naming the field. */
export function parseInput<T extends z.ZodType> (schema: T, value: unknown, where: 'query' | 'body' | 'params' | 'headers'): z.infer<T> {
  const result = schema.safeParse(value)
  if (result.success) return result.data
  const issue = result.error.issues[0]
  const field = issue == null || issue.path.length === 0 ? where : `${where}.${issue.path.map(String).join('.')}`
  throw badRequest('BAD_REQUEST', `${field}: ${issue?.message ?? 'invalid input'}`)
}

const STATUS_CODES: Record<number, string> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  406: 'NOT_ACCEPTABLE',
  409: 'CONFLICT',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  429: 'TOO_MANY_REQUESTS'
}

/** The code and status for any error thrown while handling a request. */
export function classify (err: unknown): { statusCode: number, code: string, message: string, details?: Record<string, unknown> } {
  if (err instanceof ApiError) return { statusCode: err.statusCode, code: err.code, message: err.message, ...(err.details != null ? { details: err.details } : {}) }
  const { statusCode, code, message } = err as { statusCode?: number, code?: string, message?: string }
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    // fastify's own refusals: bad JSON, wrong content type, body too large.
    const named = code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (err instanceof SyntaxError) ? 'BAD_JSON' : STATUS_CODES[statusCode] ?? 'BAD_REQUEST'
    return { statusCode, code: named, message: message ?? named }
  }
  return { statusCode: 500, code: 'INTERNAL', message: 'internal error; the node log has the details' }
}
