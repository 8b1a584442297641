import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { InvalidParametersError } from '@guoce/interface'
import { dirname } from 'node:path'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { preSharedKey } from '@libp2p/pnet'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { PNET_MAX_WRITE_BYTES, SOCKET_INACTIVITY_TIMEOUT_MS } from './constants.js'

export type { Libp2p } from 'libp2p'

export interface NodeInit {
  /** multiaddrs to listen on, e.g. `/ip4/127.0.0.1/tcp/0` */
  listen: string[]
  privateKey?: PrivateKey
  /** pre-shared cluster key in the libp2p pnet "swarm.key" format; keeps outsiders off the swarm */
  clusterKey?: Uint8Array
  /**
   * Most bytes a remote may send on one stream ahead of what this node read (yamux receive window; at
   * least 256 KiB). A service that reads only small messages (the scheduler) keeps it small.
   * @default 16 MiB (yamux's own)
   */
  streamWindowBytes?: number
  /**
   * Streams a remote may have open on one connection (yamux); each may hold a receive window of data.
   * @default 1000 (yamux's own)
   */
  maxStreamsPerConnection?: number
  /** refuse an inbound connection from this PeerId once Noise authenticated it (a host the service dropped) */
  denyPeer?: (peerId: string) => boolean
}

/**
 * libp2p pnet under the cluster key, with writes cut to PNET_MAX_WRITE_BYTES: pnet's stream otherwise
 * hands everything queued on a connection to its (WebAssembly) XSalsa20 at once, and that memory
 * cannot grow past a few tens of MiB: a backlog of large pieces would kill the process.
 */
function clusterProtector (psk: Uint8Array): NonNullable<Parameters<typeof createLibp2p>[0]>['connectionProtector'] {
  const make = preSharedKey({ psk })
  return () => {
    const inner = make()
    return {
      [Symbol.toStringTag]: 'guoce/cluster-key',
      async protect (conn, options) {
        const protectedConn = await inner.protect(conn, options)
        ;(protectedConn as unknown as { maxMessageSize?: number }).maxMessageSize = PNET_MAX_WRITE_BYTES
        return protectedConn
      }
    }
  }
}

/** A libp2p node with TCP + Noise + yamux, and nothing else (no discovery, no DHT). */
export async function createNode (init: NodeInit): Promise<Libp2p> {
  return await createLibp2p({
    ...(init.privateKey != null ? { privateKey: init.privateKey } : {}),
    addresses: { listen: init.listen },
    transports: [tcp({
      inboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      outboundSocketInactivityTimeout: SOCKET_INACTIVITY_TIMEOUT_MS,
      dialOpts: { noDelay: true },
      listenOpts: { noDelay: true }
    })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({
      maxMessageSize: 256 * 1024,
      ...(init.maxStreamsPerConnection != null ? { maxInboundStreams: init.maxStreamsPerConnection } : {}),
      ...(init.streamWindowBytes != null ? { streamOptions: { initialStreamWindowSize: 256 * 1024, maxStreamWindowSize: Math.max(256 * 1024, init.streamWindowBytes), maxReadBufferLength: 4 * 1024 * 1024, inactivityTimeout: 120_000 } } : {})
    })],
    ...(init.clusterKey != null ? { connectionProtector: clusterProtector(init.clusterKey) } : {}),
    ...(init.denyPeer != null ? { connectionGater: { denyInboundEncryptedConnection: (peer: { toString(): string }) => init.denyPeer!(peer.toString()) } } : {}),
    connectionManager: { maxConnections: 1024, inboundConnectionThreshold: 1000, maxIncomingPendingConnections: 256 },
    connectionMonitor: { enabled: false }
  })
}

/** The node's identity key, created on first use and kept at `path` (0600) so the PeerId survives restarts. */
export async function loadOrCreateKey (path: string): Promise<PrivateKey> {
  try {
    return privateKeyFromProtobuf(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const key = await generateKeyPair('Ed25519')
  await mkdir(dirname(path), { recursive: true })
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await rename(tmp, path)
  return key
}

/** Write `data` to `path` (0600) unless the file exists; the file's bytes either way. */
async function loadOrCreateSecret (path: string, make: () => Uint8Array): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  await mkdir(dirname(path), { recursive: true })
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, make(), { mode: 0o600 })
  await rename(tmp, path)
  return new Uint8Array(await readFile(path))
}

const CLUSTER_KEY_RE = /^\/key\/swarm\/psk\/1\.0\.0\/\r?\n\/base16\/\r?\n[0-9a-fA-F]{64}\s*$/

/**
 * A cluster key file (libp2p pnet swarm.key format: "/key/swarm/psk/1.0.0/", "/base16/", 64 hex digits,
 * one a line); throws InvalidParametersError naming the file when it is missing or malformed.
 */
export async function readClusterKey (path: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new InvalidParametersError(`cannot read cluster key ${path}: ${(err as Error).message}`)
  }
  if (!CLUSTER_KEY_RE.test(text)) throw new InvalidParametersError(`${path} is not a cluster key (pnet swarm.key format: /key/swarm/psk/1.0.0/, /base16/, 64 hex digits)`)
  return new TextEncoder().encode(text)
}

/** The scheduler's cluster key at `path`, created (32 random bytes, pnet format, 0600) on first use. */
export async function loadOrCreateClusterKey (path: string): Promise<Uint8Array> {
  await loadOrCreateSecret(path, () => new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString('hex')}`))
  return await readClusterKey(path)
}

/** Bytes of a seed key (raw, SEED_KEY_BYTES of them). */
export const SEED_KEY_BYTES = 32

/** A seed key file; throws InvalidParametersError naming the file when it is missing or not SEED_KEY_BYTES long. */
export async function readSeedKey (path: string): Promise<Uint8Array> {
  let key: Uint8Array
  try {
    key = new Uint8Array(await readFile(path))
  } catch (err) {
    throw new InvalidParametersError(`cannot read seed key ${path}: ${(err as Error).message}`)
  }
  if (key.byteLength !== SEED_KEY_BYTES) throw new InvalidParametersError(`${path} is not a seed key (${SEED_KEY_BYTES} bytes)`)
  return key
}

/** The scheduler's seed key at `path`, created (SEED_KEY_BYTES random bytes, 0600) on first use. */
export async function loadOrCreateSeedKey (path: string): Promise<Uint8Array> {
  await loadOrCreateSecret(path, () => randomBytes(SEED_KEY_BYTES))
  return await readSeedKey(path)
}
