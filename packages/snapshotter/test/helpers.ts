/** Test helpers: a promise-returning snapshots client, mounts through util-linux, temp dirs. */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Metadata, ServiceError } from '@grpc/grpc-js'
import { snapshotsClient, type SnapshotsClient } from '../src/index.js'
import type { Info__Output } from '../src/gen/containerd/services/snapshots/v1/Info.js'
import type { Mount__Output } from '../src/gen/containerd/types/Mount.js'

export const run = promisify(execFile)

export async function tempDir (prefix: string): Promise<string> {
  return await mkdtemp(join(tmpdir(), `guoce-snap-${prefix}-`))
}

type Unary<Req, Res> = (req: Req, cb: (err: ServiceError | null, res?: Res) => void) => unknown
function p<Req, Res> (c: SnapshotsClient, f: Unary<Req, Res>): (req: Req) => Promise<Res> {
  return async (req: Req) => await new Promise<Res>((resolve, reject) => {
    f.call(c, req, (err, res) => { if (err != null) reject(err); else resolve(res!) })
  })
}

/** The snapshots API as promises (what containerd's proxy client calls). */
export function api (socket: string) {
  const c = snapshotsClient(socket)
  return {
    client: c,
    prepare: p(c, c.Prepare as Unary<{ key: string, parent?: string, labels?: Record<string, string> }, { mounts: Mount__Output[] }>),
    view: p(c, c.View as Unary<{ key: string, parent?: string, labels?: Record<string, string> }, { mounts: Mount__Output[] }>),
    mounts: p(c, c.Mounts as Unary<{ key: string }, { mounts: Mount__Output[] }>),
    commit: p(c, c.Commit as Unary<{ name: string, key: string, labels?: Record<string, string> }, object>),
    remove: p(c, c.Remove as Unary<{ key: string }, object>),
    stat: p(c, c.Stat as Unary<{ key: string }, { info: Info__Output }>),
    update: p(c, c.Update as Unary<{ info: { name: string, labels?: Record<string, string> }, updateMask?: { paths: string[] } }, { info: Info__Output }>),
    usage: p(c, c.Usage as Unary<{ key: string }, { size: number, inodes: number }>),
    cleanup: p(c, c.Cleanup as Unary<object, object>),
    list: async (filters: string[] = []): Promise<Info__Output[]> => await new Promise((resolve, reject) => {
      const out: Info__Output[] = []
      const s = c.List({ filters })
      s.on('data', (m: { info: Info__Output[] }) => out.push(...m.info))
      s.on('error', reject)
      s.on('end', () => { resolve(out) })
    }),
    close: () => { c.close() }
  }
}
export type Api = ReturnType<typeof api>
export type { Metadata }

/** The gRPC status code a call failed with. */
export async function codeOf (p: Promise<unknown>): Promise<number> {
  try { await p } catch (err) { return (err as ServiceError).code }
  throw new Error('the call succeeded')
}

/** Mounts what the snapshotter answered at `target` (util-linux mount(8), as containerd's mount package would). */
export async function mountAll (mounts: Mount__Output[], target: string): Promise<void> {
  for (const m of mounts) await run('mount', ['-t', m.type, '-o', m.options.join(','), m.source, target])
}

export async function umount (target: string): Promise<void> {
  await run('umount', [target])
}

export async function isMounted (path: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  return info.split('\n').some(l => l.split(' ')[4] === path)
}
