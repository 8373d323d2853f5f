/**
 * The API against the browser. The operator's loopback API must not be
 * usable by a web page the operator happens to visit:
 *
 * - **Host**: every request must name, as `Host`, an IP literal, `localhost`
 *   (or a `*.localhost` name, which browsers resolve to loopback), the host
 *   the API is bound to, or a name in `apiAllowedHosts`. A page that reached
 *   the API through DNS rebinding sends its own domain as Host and gets
 *   `403 HOST_NOT_ALLOWED`, for reads too.
 * - **Origin**: a write (any method but GET, HEAD, OPTIONS) that carries an
 *   `Origin` (or `Sec-Fetch-Site`) of another origin is `403 CROSS_ORIGIN`.
 * - **JSON**: a POST without a bearer token needs `content-type:
 *   application/json`, which a cross-origin page cannot send without a CORS
 *   preflight this API never grants (`415 JSON_REQUIRED`): no "simple
 *   request" (a form post, a body-less fetch) changes anything. (PUT, PATCH
 *   and DELETE are never simple requests: a browser asks first, and is
 *   refused, so a body-less DELETE from a script or curl is fine.)
 *
 * Refusals go through the API's error handler: JSON errors, counted in
 * `metagrid_api_errors_total{code}`.
 */
import { isIP } from 'node:net'
import { ApiError } from './errors.ts'
import type { FastifyInstance, FastifyRequest } from 'fastify'

export interface BrowserGuardOptions {
  /** The host the API is bound to (from `api`). */
  apiHost: string
  /** Further host names it answers to (`apiAllowedHosts`). */
  allowedHosts: readonly string[]
}

const READS = new Set(['GET', 'HEAD', 'OPTIONS'])

/** The host name of a Host header, without port or IPv6 brackets, lowercased. */
export function hostName (header: string): string {
  const host = header.trim().toLowerCase()
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']') < 0 ? undefined : host.indexOf(']'))
  const colon = host.lastIndexOf(':')
  return colon >= 0 && host.indexOf(':') === colon ? host.slice(0, colon) : host
}

export function hostAllowed (name: string, options: BrowserGuardOptions): boolean {
  return isIP(name) !== 0 || name === 'localhost' || name.endsWith('.localhost') ||
    name === options.apiHost.toLowerCase().replace(/^\[|\]$/g, '') || options.allowedHosts.some((allowed) => allowed.toLowerCase() === name)
}

export function crossOrigin (request: FastifyRequest): boolean {
  const site = request.headers['sec-fetch-site']
  if (site != null && site !== 'same-origin' && site !== 'none') return true
  const origin = request.headers.origin
  if (origin == null) return false
  return origin !== `http://${request.headers.host ?? ''}` && origin !== `https://${request.headers.host ?? ''}`
}

export function guardAgainstBrowsers (app: FastifyInstance, options: BrowserGuardOptions): void {
  app.addHook('onRequest', async (request) => {
    const host = request.headers.host
    if (host == null || !hostAllowed(hostName(host), options)) {
      throw new ApiError(403, 'HOST_NOT_ALLOWED', `this API does not answer to the host ${JSON.stringify((host ?? '').slice(0, 64))}; add it to apiAllowedHosts if it is yours`)
    }
    if (READS.has(request.method)) return
    if (crossOrigin(request)) throw new ApiError(403, 'CROSS_ORIGIN', 'writes from another origin are refused')
    if (request.method !== 'POST') return
    const bearer = request.headers.authorization?.startsWith('Bearer ') === true
    const type = request.headers['content-type']?.split(';')[0]?.trim().toLowerCase()
    if (!bearer && type !== 'application/json') throw new ApiError(415, 'JSON_REQUIRED', 'a POST without a token needs content-type: application/json and a JSON body')
  })
}
