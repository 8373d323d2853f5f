/**
 * `GET /v1/slo`: each objective with its indicator over the window, the error
 * budget left and the burn rate, and the circuit breakers (evaluated now).
 */
import type { SloTracker } from '../../slo.ts'
import type { FastifyInstance } from 'fastify'

export function registerSloRoutes (app: FastifyInstance, slo: SloTracker): void {
  app.get('/v1/slo', async () => slo.evaluate())
}
