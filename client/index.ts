/**
 * `metagrid/client`: what an application that is not a node uses. The world
 * session SDK (browsers get only it, through the `browser` condition) and,
 * in Node, the catalog light client, which joins the mesh over libp2p.
 */
export * from './world-client.ts'
export { CatalogClient, CatalogClientError, type CatalogClientOptions } from '../p2p/catalog/client.ts'
