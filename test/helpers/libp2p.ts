/** An in-process libp2p node with metagrid's stack, for tests that play a peer the daemon must defend against. */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createLogger } from '../../daemon/log/logger.ts'
import { libp2pComponentLogger } from '../../daemon/log/libp2p-logger.ts'
import { createMetagridLibp2p, type MetagridLibp2p } from '../../p2p/libp2p.ts'
import type { PrivateKey } from '@libp2p/interface'

export async function startTestPeer (key?: PrivateKey, listen: string[] = []): Promise<{ node: MetagridLibp2p, key: PrivateKey }> {
  const privateKey = key ?? await generateKeyPair('Ed25519')
  const node = await createMetagridLibp2p({
    privateKey,
    listen,
    announce: [],
    connections: { maxConnections: 50, maxIncomingPendingConnections: 10, maxParallelDials: 10, dialTimeoutMs: 5000, inboundConnectionThreshold: 10, allow: [] },
    logger: libp2pComponentLogger(createLogger({ level: 'silent', format: 'json' })),
    metricsRegistry: null,
    version: 'test'
  })
  await node.start()
  return { node, key: privateKey }
}
