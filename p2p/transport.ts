/**
 * The TCP transport, optionally dialling out from a fixed source address.
 * libp2p's TCP transport passes extra dial options through to `net.connect`,
 * so the source address is one option on each dial of the same IP family.
 */
import { isIPv4 } from 'node:net'
import { tcp } from '@libp2p/tcp'
import type { Transport } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

export interface TransportOptions {
  /** Source address for outgoing connections; dials of the other IP family are left alone. */
  outboundBindAddress?: string
}

function family (ma: Multiaddr): 'ip4' | 'ip6' | undefined {
  const first = ma.getComponents()[0]?.name
  return first === 'ip4' || first === 'ip6' ? first : undefined
}

export function tcpTransport (options: TransportOptions = {}): (components: any) => Transport {
  const factory = tcp()
  const bind = options.outboundBindAddress
  if (bind == null) return factory
  const bindFamily = isIPv4(bind) ? 'ip4' : 'ip6'
  return (components) => {
    const inner = factory(components)
    return new Proxy(inner, {
      get (target, property, receiver) {
        if (property === 'dial') {
          return async (ma: Multiaddr, dialOptions: Parameters<Transport['dial']>[1]) => {
            return target.dial(ma, family(ma) === bindFamily ? { ...dialOptions, localAddress: bind } as typeof dialOptions : dialOptions)
          }
        }
        const value: unknown = Reflect.get(target, property, receiver)
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
  }
}
