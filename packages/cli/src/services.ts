/** Wiring of the long-running services; the CLI commands and `guoce up` share it. */
import { join } from 'node:path'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { InvalidParametersError, type Logger, type TaskReader } from '@guoce/interface'
import { createNode, loadOrCreateKey, loadOrCreateClusterKey, loadOrCreateSeedKey, readClusterKey, readSeedKey, jsonLogger, type Libp2p, type LogLevel, type PieceChannel } from '@guoce/transfer'
import { openStore } from '@guoce/store'
import { Scheduler, SCHEDULER_STREAM_WINDOW_BYTES, SCHEDULER_STREAMS_PER_CONNECTION } from '@guoce/scheduler'
import { SeedPeer } from '@guoce/seed-peer'
import { PeerDaemon, buildServer, listenApi } from '@guoce/peer'
import type { Mirror } from '@guoce/registry-mirror'
import type { FastifyInstance } from 'fastify'
import type { Counter, Gauge, Registry } from 'prom-client'

export interface Running { stop(): Promise<void> }

function p2pAddr (node: Libp2p, prefer = '127.0.0.1'): string {
  const addrs = node.getMultiaddrs().map(a => a.toString())
  return addrs.find(a => a.includes(`/ip4/${prefer}/`)) ?? addrs[0] ?? ''
}

/**
 * How a node gets into the cluster: the cluster key file, or `open` (no key: anyone may connect).
 * Seeds and daemons must say one of the two; the scheduler creates `<data>/cluster.key` when given neither.
 */
export interface Membership { clusterKey?: string | undefined, open?: boolean | undefined }

/** The cluster key bytes for createNode, or undefined for an open node (warned); throws without either. */
export async function clusterKeyOf (o: Membership, log: Logger, service: string): Promise<Uint8Array | undefined> {
  if (o.clusterKey != null && o.open === true) throw new InvalidParametersError('--cluster-key and --open exclude each other')
  if (o.clusterKey != null) return await readClusterKey(o.clusterKey)
  if (o.open === true) { log.warn('open cluster: no cluster key, any node that can reach this one may connect', { service }); return undefined }
  throw new InvalidParametersError(`${service} needs --cluster-key FILE (the scheduler's cluster.key) or --open`)
}

export async function startScheduler (o: Membership & { data: string, listen: string, log: Logger, chainMaxPeers?: number | undefined }): Promise<Running & { addr: string, addrs: string[], scheduler: Scheduler, node: Libp2p, clusterKey: string | undefined, seedKey: string }> {
  await mkdir(o.data, { recursive: true })
  let clusterKey: Uint8Array | undefined
  let clusterKeyPath: string | undefined
  if (o.open === true || o.clusterKey != null) {
    clusterKey = await clusterKeyOf(o, o.log, 'scheduler')
    clusterKeyPath = o.clusterKey
  } else {
    clusterKeyPath = join(o.data, 'cluster.key')
    clusterKey = await loadOrCreateClusterKey(clusterKeyPath)
  }
  const seedKeyPath = join(o.data, 'seed.key')
  const seedKey = await loadOrCreateSeedKey(seedKeyPath)
  let scheduler: Scheduler | undefined
  const node = await createNode({
    listen: [o.listen],
    privateKey: await loadOrCreateKey(join(o.data, 'identity.key')),
    streamWindowBytes: SCHEDULER_STREAM_WINDOW_BYTES,
    maxStreamsPerConnection: SCHEDULER_STREAMS_PER_CONNECTION,
    denyPeer: id => scheduler?.isBanned(id) === true,
    ...(clusterKey != null ? { clusterKey } : {})
  })
  scheduler = new Scheduler({ node, log: o.log, seedKey, ...(o.chainMaxPeers != null ? { chainMaxPeers: o.chainMaxPeers } : {}) })
  await scheduler.start()
  return {
    addr: p2pAddr(node), addrs: node.getMultiaddrs().map(a => a.toString()), scheduler, node, clusterKey: clusterKeyPath, seedKey: seedKeyPath,
    stop: async () => { await scheduler.stop(); await node.stop() }
  }
}

export async function startSeed (o: Membership & { seedKey?: string | undefined, pieceChannel?: PieceChannel | undefined, quotaBytes?: number | undefined, data: string, listen: string, scheduler: string, log: Logger, originTimeoutMs?: number | undefined }): Promise<Running & { seed: SeedPeer, node: Libp2p }> {
  const clusterKey = await clusterKeyOf(o, o.log, 'seed')
  const seedKey = o.seedKey != null ? await readSeedKey(o.seedKey) : undefined
  if (seedKey == null) o.log.warn('no --seed-key: the scheduler treats this seed as a normal host (no seed orders)', {})
  await mkdir(o.data, { recursive: true })
  const node = await createNode({ listen: [o.listen], privateKey: await loadOrCreateKey(join(o.data, 'identity.key')), ...(clusterKey != null ? { clusterKey } : {}) })
  const store = await openStore({ dir: o.data, ...(o.quotaBytes != null ? { quotaBytes: o.quotaBytes } : {}) })
  const seed = new SeedPeer({ node, store, scheduler: o.scheduler, log: o.log, ...(seedKey != null ? { seedKey } : {}), ...(o.pieceChannel != null ? { pieceChannel: o.pieceChannel } : {}), ...(o.originTimeoutMs != null ? { originTimeoutMs: o.originTimeoutMs } : {}) })
  await seed.start()
  return { seed, node, stop: async () => { await seed.stop(); await store.close(); await node.stop() } }
}

export async function startDaemon (o: Membership & { pieceChannel?: PieceChannel | undefined, quotaBytes?: number | undefined, data: string, listen: string, scheduler: string, api: { host: string, port: number }, log: Logger, originTimeoutMs?: number | undefined, readTimeoutMs?: number | undefined, idc?: string | undefined, location?: string | undefined, mirror?: MirrorOptions | undefined }): Promise<Running & { daemon: PeerDaemon, apiUrl: string, app: FastifyInstance, node: Libp2p, mirror?: Mirror | undefined, mirrorUrl?: string | undefined }> {
  const clusterKey = await clusterKeyOf(o, o.log, 'daemon')
  await mkdir(o.data, { recursive: true })
  const node = await createNode({ listen: [o.listen], privateKey: await loadOrCreateKey(join(o.data, 'identity.key')), ...(clusterKey != null ? { clusterKey } : {}) })
  const store = await openStore({ dir: o.data, ...(o.quotaBytes != null ? { quotaBytes: o.quotaBytes } : {}) })
  const daemon = new PeerDaemon({
    node, store, scheduler: o.scheduler, log: o.log,
    ...(o.pieceChannel != null ? { pieceChannel: o.pieceChannel } : {}),
    ...(o.originTimeoutMs != null ? { originTimeoutMs: o.originTimeoutMs } : {}),
    ...(o.readTimeoutMs != null ? { readTimeoutMs: o.readTimeoutMs } : {}),
    ...(o.idc != null ? { idc: o.idc } : {}),
    ...(o.location != null ? { location: o.location } : {})
  })
  await daemon.start()
  // the registry mirror reads blobs through the daemon's reader; its counters join the daemon's /metrics
  // loaded only for a daemon that serves one
  const mirror = o.mirror != null ? (await import('@guoce/registry-mirror')).buildMirror({ reader: daemon.reader, log: o.log, defaultUpstream: o.mirror.upstream, insecure: o.mirror.insecure, maxManifestBytes: o.mirror.maxManifestBytes }) : undefined
  // the import token: in a 0600 file of the daemon's user, so only that user (and root) may import
  const importToken = { token: randomBytes(32).toString('hex'), file: join(o.data, 'import.token') }
  await rm(importToken.file, { force: true })
  await writeFile(importToken.file, importToken.token + '\n', { mode: 0o600, flag: 'wx' })
  const app = buildServer(daemon, { importToken, ...(mirror != null ? { extraMetrics: () => mirror.metrics() } : {}) })
  const apiUrl = await listenApi(app, o.api)
  const mirrorUrl = mirror != null && o.mirror != null ? await mirror.app.listen({ host: o.mirror.host, port: o.mirror.port }) : undefined
  return { daemon, apiUrl, app, node, mirror, mirrorUrl, stop: async () => { await mirror?.app.close(); await app.close(); await daemon.stop(); await node.stop() } }
}

/** `--mirror HOST:PORT` (loopback), `--mirror-upstream R` (when a request names none), `--mirror-insecure R` (plain http), `--mirror-max-manifest SIZE`. */
export interface MirrorOptions { host: string, port: number, upstream?: string | undefined, insecure?: string[] | undefined, maxManifestBytes?: number | undefined }

/** Where a daemon serves containerd's snapshots API (`--snapshotter-socket`), and the layouts it mounts layers from. */
export interface SnapshotterOptions { socket: string, root: string, layouts?: string[] | undefined, insecure?: string[] | undefined }

/** The peer daemon a snapshotter without layouts fetches lazy layers' chunks through (this process's own). */
export interface SnapshotterDaemon { apiUrl: string, chunkDir: string, metrics: Registry, /** this process's daemon's reader: chunks read in process */ reader?: TaskReader }

/**
 * The containerd snapshotter (packages/snapshotter) on its unix socket. With `layouts`, layers of the converted
 * images in those OCI layouts are mounted from their local blobs (file-backed EROFS) instead of unpacked.
 * Without, layers of converted images are mounted lazily from their registry (registryMounter): chunks
 * through this process's daemon (`daemon.apiUrl`), counted in its /metrics as guoce_snapshotter_*.
 */
export async function startSnapshotterService (o: SnapshotterOptions, log: Logger, daemon: SnapshotterDaemon): Promise<Running & { socket: string }> {
  const { startSnapshotter, ociLayoutMounter, registryMounter } = await import('@guoce/snapshotter')
  const mounter = await import('@guoce/native-mount')
  const lazy = o.layouts != null && o.layouts.length > 0
    ? undefined
    : registryMounter({ dir: join(o.root, 'lazy'), chunkDir: daemon.chunkDir, daemon: daemon.apiUrl, ...(daemon.reader !== undefined ? { reader: daemon.reader } : {}), mounter, insecure: o.insecure ?? [], log: log.child({ component: 'registry-mounter' }) })
  const remote = lazy ?? ociLayoutMounter({ layouts: o.layouts!, mounter })
  if (lazy !== undefined) {
    const prom = await import('prom-client')
    const counted = (name: string, help: string, get: () => number): void => {
      const c: Counter<string> = new prom.Counter({ name, help, registers: [daemon.metrics], collect () { c.reset(); c.inc(get()) } })
    }
    counted('guoce_snapshotter_chunks_fetched_total', 'Chunks of lazy layers fetched into the node chunk store', () => lazy.stats().store.fetches)
    counted('guoce_snapshotter_chunk_bytes_fetched_total', 'Bytes of chunks of lazy layers fetched', () => lazy.stats().store.fetchedBytes)
    counted('guoce_snapshotter_reads_total', 'Reads of lazy layers\' blob files (kernel EROFS)', () => lazy.stats().server.reads)
    counted('guoce_snapshotter_source_reads_total', 'Chunk fetches of lazy layers from the daemon\'s reader', () => lazy.stats().source.reads)
    counted('guoce_snapshotter_source_read_seconds_total', 'Wall time of those fetches, summed', () => lazy.stats().source.ms / 1000)
    counted('guoce_snapshotter_prefetched_chunks_total', 'Chunks of lazy layers fetched (or found held) from their images\' prefetch lists', () => lazy.stats().prefetch.chunks)
    counted('guoce_snapshotter_failed_reads_total', 'Reads of lazy layers answered with EIO', () => lazy.stats().server.failedReads)
    counted('guoce_snapshotter_refused_chunks_total', 'Chunk fetches of lazy layers refused: the bytes did not decode to the digest the chunk table or the prefetch list names', () => lazy.stats().server.refused)
    counted('guoce_snapshotter_prefetch_failed_total', 'Chunks of prefetch lists that could not be fetched (left to the reads)', () => lazy.stats().prefetch.failed)
    const served: Gauge<string> = new prom.Gauge({ name: 'guoce_snapshotter_chunks', help: 'Chunks in the blobs of the lazy layers served', registers: [daemon.metrics], collect () { served.set(lazy.stats().chunks) } })
  }
  const s = await startSnapshotter({ root: o.root, socket: o.socket, log, remote })
  return { socket: s.socket, stop: async () => { await s.stop(); await lazy?.close() } }
}

/** JSON-lines logger on stderr at GUOCE_LOG's level (default `fallback`). */
export function logger (_json: boolean, fallback: LogLevel): Logger {
  const lvl = (process.env.GUOCE_LOG ?? fallback) as LogLevel
  return jsonLogger(['debug', 'info', 'warn', 'error', 'silent'].includes(lvl) ? lvl : fallback)
}
