/**
 * The gRPC face of a Snapshotter: containerd.services.snapshots.v1.Snapshots on a unix socket, as containerd's
 * `[proxy_plugins.NAME] type = "snapshot"` expects. Errors leave as the status of grpcStatusOf (errors.ts).
 */
import { chmod, mkdir, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import type { Logger } from '@guoce/interface'
import { grpcStatusOf } from './errors.js'
import { snapshotsProto } from './proto.js'
import type { Snapshotter, SnapshotInfo, Mount } from './snapshotter.js'
import type { SnapshotsHandlers } from './gen/containerd/services/snapshots/v1/Snapshots.js'
import type { Info } from './gen/containerd/services/snapshots/v1/Info.js'
import type { Timestamp } from './gen/google/protobuf/Timestamp.js'
import type { Mount as PbMount } from './gen/containerd/types/Mount.js'

/** Infos per List response message (containerd's own service sends 100). */
const LIST_BATCH = 100
const KIND = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' } as const

function ts (d: Date): Timestamp { const ms = d.getTime(); return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } }
function pbInfo (i: SnapshotInfo): Info {
  return { name: i.name, parent: i.parent, kind: KIND[i.kind], createdAt: ts(i.created), updatedAt: ts(i.updated), labels: i.labels }
}
function pbMounts (ms: Mount[]): PbMount[] { return ms.map(m => ({ type: m.type, source: m.source, target: m.target, options: m.options })) }

function reply<T> (log: Logger, method: string, key: string, cb: grpc.sendUnaryData<T>, fn: () => Promise<T>): void {
  fn().then(v => { cb(null, v) }, (err: unknown) => {
    const code = grpcStatusOf(err)
    if (code === grpc.status.INTERNAL) log.error('snapshot call failed', { method, key, error: (err as Error).message })
    else log.debug('snapshot call refused', { method, key, code, error: (err as Error).message })
    cb({ code, details: (err as Error).message ?? String(err) })
  })
}

export function snapshotsHandlers (s: Snapshotter, log: Logger): SnapshotsHandlers {
  return {
    Prepare: (call, cb) => {
      const ac = new AbortController()
      call.on('cancelled', () => { ac.abort() })
      reply(log, 'Prepare', call.request.key, cb, async () => ({ mounts: pbMounts(await s.prepare(call.request.key, call.request.parent, call.request.labels, { signal: ac.signal })) }))
    },
    View: (call, cb) => { reply(log, 'View', call.request.key, cb, async () => ({ mounts: pbMounts(await s.view(call.request.key, call.request.parent, call.request.labels)) })) },
    Mounts: (call, cb) => { reply(log, 'Mounts', call.request.key, cb, async () => ({ mounts: pbMounts(await s.mounts(call.request.key)) })) },
    Commit: (call, cb) => { reply(log, 'Commit', call.request.key, cb, async () => { await s.commit(call.request.name, call.request.key, call.request.labels); return {} }) },
    Remove: (call, cb) => { reply(log, 'Remove', call.request.key, cb, async () => { await s.remove(call.request.key); return {} }) },
    Stat: (call, cb) => { reply(log, 'Stat', call.request.key, cb, async () => ({ info: pbInfo(await s.stat(call.request.key)) })) },
    Update: (call, cb) => {
      const info = call.request.info
      reply(log, 'Update', info?.name ?? '', cb, async () => ({ info: pbInfo(await s.update(info?.name ?? '', info?.labels ?? {}, call.request.updateMask?.paths ?? [])) }))
    },
    Usage: (call, cb) => { reply(log, 'Usage', call.request.key, cb, async () => await s.usage(call.request.key)) },
    Cleanup: (call, cb) => { reply(log, 'Cleanup', '', cb, async () => { await s.cleanup(); return {} }) },
    List: (call) => {
      try {
        const all = s.list(call.request.filters)
        for (let i = 0; i < all.length; i += LIST_BATCH) call.write({ info: all.slice(i, i + LIST_BATCH).map(pbInfo) })
        call.end()
      } catch (err) {
        call.emit('error', { code: grpcStatusOf(err), details: (err as Error).message })
      }
    }
  }
}

export interface SnapshotServer { socket: string, close: () => Promise<void> }

/** Serves `s` on a unix socket (0600; a stale socket file at that path is replaced). */
export async function serveSnapshots (s: Snapshotter, socket: string, log: Logger): Promise<SnapshotServer> {
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 << 20 })
  server.addService(snapshotsProto().containerd.services.snapshots.v1.Snapshots.service, snapshotsHandlers(s, log))
  await mkdir(dirname(socket), { recursive: true, mode: 0o700 })
  await rm(socket, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => { if (err != null) reject(err); else resolve() })
  })
  await chmod(socket, 0o600)
  return {
    socket,
    close: async () => {
      await new Promise<void>(resolve => {
        const t = setTimeout(() => { server.forceShutdown(); resolve() }, 2_000)
        server.tryShutdown(() => { clearTimeout(t); resolve() })
      })
      await rm(socket, { force: true })
    }
  }
}

/** A client of a snapshots socket (tests, tools). */
export function snapshotsClient (socket: string): import('./gen/containerd/services/snapshots/v1/Snapshots.js').SnapshotsClient {
  const Ctor = snapshotsProto().containerd.services.snapshots.v1.Snapshots
  return new Ctor(`unix:${socket}`, grpc.credentials.createInsecure())
}
