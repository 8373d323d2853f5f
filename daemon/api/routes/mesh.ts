/**
 * `GET /v1/mesh`: every member this node knows, its state, last load report,
 * coordinate, and the RTT to it, estimated and measured.
 */
import type { Mesh } from '../../../p2p/mesh.ts'
import type { FastifyInstance } from 'fastify'

export function registerMeshRoutes (app: FastifyInstance, mesh: Mesh): void {
  app.get('/v1/mesh', async () => mesh.view())
}
