/** Wiring of the long-running services; the CLI commands and `guoce up` share it. */
import { join } from 'node:path'
import { mkdir } from 'node:fs/promises'
import type { Logger } from '@guoce/interface'
import { createNode, loadOrCreateKey, jsonLogger, type Libp2p, type LogLevel, type PieceChannel } from '@guoce/transfer'
import { openStore } from '@guoce/store'
import { Scheduler } from '@guoce/scheduler'
import { SeedPeer } from '@guoce/seed-peer'
import { PeerDaemon, buildServer, listenApi } from '@guoce/peer'
import type { FastifyInstance } from 'fastify'

export interface Running { stop(): Promise<void> }

function p2pAddr (node: Libp2p, prefer = '127.0.0.1'): string {
  const addrs = node.getMultiaddrs().map(a => a.toString())
  return addrs.find(a => a.includes(`/ip4/${prefer}/`)) ?? addrs[0] ?? ''
}

export async function startScheduler (o: { data: string, listen: string, log: Logger, chainMaxPeers?: number | undefined }): Promise<Running & { addr: string, addrs: string[], scheduler: Scheduler, node: Libp2p }> {
  await mkdir(o.data, { recursive: true })
  const node = await createNode({ listen: [o.listen], privateKey: await loadOrCreateKey(join(o.data, 'identity.key')) })
  const scheduler = new Scheduler({ node, log: o.log, ...(o.chainMaxPeers != null ? { chainMaxPeers: o.chainMaxPeers } : {}) })
  await scheduler.start()
  return {
    addr: p2pAddr(node), addrs: node.getMultiaddrs().map(a => a.toString()), scheduler, node,
    stop: async () => { await scheduler.stop(); await node.stop() }
  }
}

export async function startSeed (o: { pieceChannel?: PieceChannel | undefined, quotaBytes?: number | undefined, data: string, listen: string, scheduler: string, log: Logger, originTimeoutMs?: number | undefined }): Promise<Running & { seed: SeedPeer, node: Libp2p }> {
  await mkdir(o.data, { recursive: true })
  const node = await createNode({ listen: [o.listen], privateKey: await loadOrCreateKey(join(o.data, 'identity.key')) })
  const store = await openStore({ dir: o.data, ...(o.quotaBytes != null ? { quotaBytes: o.quotaBytes } : {}) })
  const seed = new SeedPeer({ node, store, scheduler: o.scheduler, log: o.log, ...(o.pieceChannel != null ? { pieceChannel: o.pieceChannel } : {}), ...(o.originTimeoutMs != null ? { originTimeoutMs: o.originTimeoutMs } : {}) })
  await seed.start()
  return { seed, node, stop: async () => { await seed.stop(); await store.close(); await node.stop() } }
}

export async function startDaemon (o: { pieceChannel?: PieceChannel | undefined, quotaBytes?: number | undefined, data: string, listen: string, scheduler: string, api: { host: string, port: number }, log: Logger, originTimeoutMs?: number | undefined, idc?: string | undefined, location?: string | undefined }): Promise<Running & { daemon: PeerDaemon, apiUrl: string, app: FastifyInstance, node: Libp2p }> {
  await mkdir(o.data, { recursive: true })
  const node = await createNode({ listen: [o.listen], privateKey: await loadOrCreateKey(join(o.data, 'identity.key')) })
  const store = await openStore({ dir: o.data, ...(o.quotaBytes != null ? { quotaBytes: o.quotaBytes } : {}) })
  const daemon = new PeerDaemon({
    node, store, scheduler: o.scheduler, log: o.log,
    ...(o.pieceChannel != null ? { pieceChannel: o.pieceChannel } : {}),
    ...(o.originTimeoutMs != null ? { originTimeoutMs: o.originTimeoutMs } : {}),
    ...(o.idc != null ? { idc: o.idc } : {}),
    ...(o.location != null ? { location: o.location } : {})
  })
  await daemon.start()
  const app = buildServer(daemon)
  const apiUrl = await listenApi(app, o.api)
  return { daemon, apiUrl, app, node, stop: async () => { await app.close(); await daemon.stop(); await node.stop() } }
}

/** JSON-lines logger on stderr at GUOCE_LOG's level (default `fallback`). */
export function logger (_json: boolean, fallback: LogLevel): Logger {
  const lvl = (process.env.GUOCE_LOG ?? fallback) as LogLevel
  return jsonLogger(['debug', 'info', 'warn', 'error', 'silent'].includes(lvl) ? lvl : fallback)
}
