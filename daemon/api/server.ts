/**
 * The HTTP API, bound to loopback unless configured otherwise. Routes are
 * registered by the parts that own them; this file owns what every route
 * shares: the error envelope, request metrics and logging.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { classify } from './errors.ts'
import type { Logger } from '../log/logger.ts'
import type { Metrics } from '../metrics.ts'

export interface ApiServerComponents {
  logger: Logger
  metrics: Metrics | null
  /** Requests in flight, kept current for load reports (their queue length). */
  inFlight?: { count: number }
  /** Called with each finished request's latency (ms), except long-lived streams; feeds the API latency SLO. */
  onLatency?: (ms: number) => void
}

export interface ApiServerOptions {
  /** Largest request body accepted; larger ones get 413 before any handler runs. */
  bodyLimit: number
}

export const defaultApiServerOptions: ApiServerOptions = {
  // Entity writes are small JSON documents; 1 MiB leaves room without letting one request pin memory.
  bodyLimit: 1024 * 1024
}

export function createApiServer (components: ApiServerComponents, options: ApiServerOptions = defaultApiServerOptions): FastifyInstance {
  const { logger, metrics } = components
  const log = logger.child({ component: 'metagrid:api' })
  const startTimes = new WeakMap<object, bigint>()
  const app = Fastify({
    logger: false,
    bodyLimit: options.bodyLimit,
    // On close, drop idle keep-alive sockets so shutdown does not wait for clients that went quiet.
    forceCloseConnections: 'idle',
    return503OnClosing: true
  })

  app.addHook('onRequest', async (request) => {
    startTimes.set(request, process.hrtime.bigint())
    if (components.inFlight != null) components.inFlight.count++
  })
  app.addHook('onResponse', async (request, reply) => {
    if (components.inFlight != null) components.inFlight.count--
    const start = startTimes.get(request)
    if (start == null || metrics == null) return
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    if (components.onLatency != null && !(request.routeOptions.url ?? '').endsWith('/events')) components.onLatency(seconds * 1000)
    metrics.apiRequestDuration.observe({ method: request.method, route: request.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) }, seconds)
  })

  app.setErrorHandler(async (err, request, reply) => {
    const { statusCode, code, message, details } = classify(err)
    metrics?.apiErrors.inc({ code })
    if (statusCode >= 500 && code === 'INTERNAL') {
      log.error({ code: 'API_INTERNAL', err, method: request.method, url: request.url }, 'request failed')
    } else {
      log.debug({ code, method: request.method, url: request.url, reason: message }, 'request refused')
    }
    return reply.status(statusCode).type('application/json').send({ error: { code, message, ...details } })
  })

  app.setNotFoundHandler(async (request, reply) => {
    metrics?.apiErrors.inc({ code: 'NOT_FOUND' })
    return reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route for ${request.method} ${request.url.split('?')[0] ?? ''}` } })
  })

  return app
}
