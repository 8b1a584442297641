/**
 * The snapshotter: containerd's overlayfs snapshotter semantics (containerd 1.6, snapshots/overlay), with
 * metadata in a MetaStore and an optional RemoteLayerMounter for layers that need no download.
 *
 * Layout under `root`: `metadata.json`, `snapshots/<id>/fs` (an active snapshot's upperdir, a committed
 * one's lowerdir, a remote one's mount point) and `snapshots/<id>/work` (overlay workdir, active only).
 * Mounts, as containerd's overlayfs snapshotter gives them:
 * - no parent: `bind` of fs, `rw` (active) or `ro` (view);
 * - active with parents: `overlay`, `upperdir=fs,workdir=work,lowerdir=PARENTS` (nearest parent first);
 * - view with one parent: `bind` `ro` of the parent's fs; with more: `overlay` with `lowerdir=` only.
 *
 * Who owns what: every change to the metadata and to directories runs under one lock (`locked()`), metadata
 * first persisted then acted on: Prepare makes directories, then records the snapshot; Remove forgets the
 * snapshot, then deletes its directory. A crash between the two leaves a directory nothing references,
 * which Cleanup removes. Reads (Stat, List, Mounts, Usage) take no lock.
 */
import { lstat, mkdir, readdir, readFile, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { AbortOptions, Logger } from '@guoce/interface'
import { MetaStore, type SnapshotKind, type SnapshotRecord } from './metadata.js'
import { SnapshotArgumentError, SnapshotExistsError, SnapshotNotFoundError, SnapshotStateError } from './errors.js'
import { remoteLayerOf, type RemoteLayerMounter } from './remote.js'
import { parseFilter, matches } from './filters.js'
import { LABEL_REMOTE, MAX_KEY_BYTES, MAX_LABEL_BYTES, MAX_LABELS, MAX_SNAPSHOTS, REMOTE_MOUNT_TIMEOUT_MS } from './constants.js'

export interface Mount { type: string, source: string, target: string, options: string[] }
export interface SnapshotInfo { name: string, parent: string, kind: SnapshotKind, labels: Record<string, string>, created: Date, updated: Date }
export interface Usage { size: number, inodes: number }

export interface SnapshotterInit {
  /** Directory of the metadata and snapshot directories (created). */
  root: string
  log?: Logger
  /** Mounts layers that need no download; without one, every layer is unpacked by containerd. */
  remote?: RemoteLayerMounter
  /** Remove only forgets a snapshot; its directory is deleted by the next Cleanup (containerd's async remove). */
  asyncRemove?: boolean
}

const nullLog: Logger = { debug () {}, info () {}, warn () {}, error () {}, child () { return nullLog } }

/** containerd's fs.DiskUsage: allocated bytes (st_blocks × 512) and inodes of a tree, each inode once. */
export async function diskUsage (dir: string): Promise<Usage> {
  const seen = new Set<bigint>()
  let size = 0
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true })
    if (!seen.has(st.ino)) { seen.add(st.ino); size += Number(st.blocks) * 512 }
    if (st.isDirectory()) for (const e of await readdir(p)) await walk(join(p, e))
  }
  await walk(dir)
  return { size, inodes: seen.size }
}

/** Mount points below `root`, from the kernel's mount table. */
async function mountPointsUnder (root: string): Promise<Set<string>> {
  const out = new Set<string>()
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  for (const line of text.split('\n')) {
    const f = line.split(' ')
    const p = f[4]?.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))
    if (p !== undefined && p.startsWith(root + '/')) out.add(p)
  }
  return out
}

function checkKey (what: string, k: string): void {
  if (k === '') throw new SnapshotArgumentError(`${what} is empty`)
  if (Buffer.byteLength(k) > MAX_KEY_BYTES) throw new SnapshotArgumentError(`${what} is longer than ${MAX_KEY_BYTES} bytes`)
}

function checkLabels (labels: Record<string, string>): void {
  const entries = Object.entries(labels)
  if (entries.length > MAX_LABELS) throw new SnapshotArgumentError(`more than ${MAX_LABELS} labels`)
  for (const [k, v] of entries) {
    if (k === '') throw new SnapshotArgumentError('empty label key')
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES) throw new SnapshotArgumentError(`label ${JSON.stringify(k.slice(0, 64))}: key and value longer than ${MAX_LABEL_BYTES} bytes`)
  }
}

export class Snapshotter {
  private lock: Promise<unknown> = Promise.resolve()
  private readonly log: Logger
  private readonly overlayIndexOff = existsSync('/sys/module/overlay/parameters/index')

  private constructor (readonly root: string, private readonly meta: MetaStore, private readonly init: SnapshotterInit) {
    this.log = init.log ?? nullLog
  }

  /** Opens (or creates) a snapshotter at `init.root`; remote snapshots whose mounts are gone are mounted again. */
  static async open (init: SnapshotterInit): Promise<Snapshotter> {
    await mkdir(join(init.root, 'snapshots'), { recursive: true, mode: 0o700 })
    const s = new Snapshotter(init.root, await MetaStore.open(init.root), init)
    await s.restoreRemote()
    return s
  }

  private dir (r: SnapshotRecord): string { return join(this.root, 'snapshots', String(r.id)) }
  fsPath (r: SnapshotRecord): string { return join(this.dir(r), 'fs') }

  private async locked<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn)
    this.lock = run.catch(() => {})
    return await run
  }

  private get (key: string): SnapshotRecord {
    const r = this.meta.snapshots.get(key)
    if (r === undefined) throw new SnapshotNotFoundError(`snapshot ${JSON.stringify(key)} does not exist`)
    return r
  }

  private async restoreRemote (): Promise<void> {
    const remote = [...this.meta.snapshots.values()].filter(r => r.remote !== undefined)
    if (remote.length === 0) return
    const mounted = await mountPointsUnder(join(this.root, 'snapshots'))
    for (const r of remote) {
      if (mounted.has(this.fsPath(r))) {
        if (this.init.remote?.remountOnOpen !== true) continue
        // mounted by an earlier process over a server that died with it: detached (containers that hold it
        // keep what they hold), mounted again below for the containers to come
        await this.init.remote.unmount(this.fsPath(r)).catch((err: Error) => { this.log.warn('stale remote layer not detached', { ref: r.remote!.ref, error: err.message }) })
      }
      if (this.init.remote === undefined) { this.log.warn('remote snapshot is not mounted and no remote mounter is configured', { ref: r.remote!.ref }); continue }
      try {
        const ok = await this.init.remote.mount(r.remote!, this.fsPath(r), { signal: AbortSignal.timeout(REMOTE_MOUNT_TIMEOUT_MS) })
        if (!ok) this.log.warn('remote mounter declined a layer it mounted before', { ref: r.remote!.ref })
      } catch (err) {
        this.log.error('remote snapshot could not be mounted again', { ref: r.remote!.ref, error: (err as Error).message })
      }
    }
  }

  mountsOf (r: SnapshotRecord): Mount[] {
    const parents = this.meta.ancestors(r.parent)
    if (parents.length === 0) {
      return [{ type: 'bind', source: this.fsPath(r), target: '', options: [r.kind === 'view' ? 'ro' : 'rw', 'rbind'] }]
    }
    const options: string[] = []
    if (this.overlayIndexOff) options.push('index=off')
    if (r.kind === 'active') {
      options.push(`workdir=${join(this.dir(r), 'work')}`, `upperdir=${this.fsPath(r)}`)
    } else if (parents.length === 1) {
      return [{ type: 'bind', source: this.fsPath(parents[0]!), target: '', options: ['ro', 'rbind'] }]
    }
    options.push(`lowerdir=${parents.map(p => this.fsPath(p)).join(':')}`)
    return [{ type: 'overlay', source: 'overlay', target: '', options }]
  }

  async prepare (key: string, parent: string, labels: Record<string, string>, opts: AbortOptions = {}): Promise<Mount[]> {
    return await this.create('active', key, parent, labels, opts)
  }

  async view (key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return await this.create('view', key, parent, labels, {})
  }

  private async create (kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>, opts: AbortOptions): Promise<Mount[]> {
    checkKey('key', key)
    checkLabels(labels)
    return await this.locked(async () => {
      if (this.meta.snapshots.has(key)) throw new SnapshotExistsError(`snapshot ${JSON.stringify(key)} already exists`)
      if (parent !== '') {
        const p = this.meta.snapshots.get(parent)
        if (p === undefined) throw new SnapshotNotFoundError(`parent snapshot ${JSON.stringify(parent)} does not exist`)
        if (p.kind !== 'committed') throw new SnapshotArgumentError(`parent ${JSON.stringify(parent)} is not a committed snapshot`)
      }
      if (this.meta.snapshots.size >= MAX_SNAPSHOTS) throw new SnapshotStateError(`more than ${MAX_SNAPSHOTS} snapshots`)
      const remote = kind === 'active' && this.init.remote !== undefined ? remoteLayerOf(labels) : undefined
      this.log.debug('create snapshot', { kind, key, parent, labels, remote: remote !== undefined })
      if (remote !== undefined && this.meta.snapshots.has(remote.ref)) throw new SnapshotExistsError(`target snapshot ${JSON.stringify(remote.ref)} already exists`)
      const now = new Date().toISOString()
      const r: SnapshotRecord = { id: this.meta.nextId++, kind, parent, labels: { ...labels }, created: now, updated: now }
      const dir = this.dir(r)
      await rm(dir, { recursive: true, force: true }) // a leftover of a crash before its id was recorded
      await mkdir(join(dir, 'fs'), { recursive: true, mode: 0o755 })
      if (remote !== undefined && await this.mountRemote(r, remote, opts)) {
        // the layer is there without a download: commit it under its target and tell containerd so
        this.meta.snapshots.set(remote.ref, { ...r, kind: 'committed', labels: { ...labels, [LABEL_REMOTE]: remote.layerDigest }, usage: { size: 0, inodes: 0 }, remote })
        await this.persistOr(async () => { await this.init.remote!.unmount(this.fsPath(r)).catch(() => {}); this.meta.snapshots.delete(remote.ref); await rm(dir, { recursive: true, force: true }) })
        this.log.info('remote layer mounted', { ref: remote.ref, layer: remote.layerDigest, image: remote.imageRef })
        throw new SnapshotExistsError(`target snapshot ${JSON.stringify(remote.ref)} already exists (mounted remotely)`)
      }
      if (kind === 'active') await mkdir(join(dir, 'work'), { mode: 0o711 })
      this.meta.snapshots.set(key, r)
      await this.persistOr(async () => { this.meta.snapshots.delete(key); await rm(dir, { recursive: true, force: true }) })
      return this.mountsOf(r)
    })
  }

  /** Persists the metadata; on failure undoes the in-memory change with `undo` and rethrows. */
  private async persistOr (undo: () => Promise<void>): Promise<void> {
    try { await this.meta.commit() } catch (err) { await undo().catch(() => {}); throw err }
  }

  private async mountRemote (r: SnapshotRecord, layer: NonNullable<ReturnType<typeof remoteLayerOf>>, opts: AbortOptions): Promise<boolean> {
    const signal = opts.signal != null ? AbortSignal.any([opts.signal, AbortSignal.timeout(REMOTE_MOUNT_TIMEOUT_MS)]) : AbortSignal.timeout(REMOTE_MOUNT_TIMEOUT_MS)
    try {
      return await this.init.remote!.mount(layer, this.fsPath(r), { signal })
    } catch (err) {
      await rm(this.dir(r), { recursive: true, force: true }).catch(() => {})
      throw err
    }
  }

  async mounts (key: string): Promise<Mount[]> {
    const r = this.get(key)
    if (r.kind === 'committed') throw new SnapshotStateError(`snapshot ${JSON.stringify(key)} is committed: it has no mounts of its own`)
    return this.mountsOf(r)
  }

  async commit (name: string, key: string, labels: Record<string, string>): Promise<void> {
    checkKey('name', name)
    checkLabels(labels)
    await this.locked(async () => {
      const r = this.get(key)
      if (r.kind !== 'active') throw new SnapshotStateError(`snapshot ${JSON.stringify(key)} is not active`)
      if (this.meta.snapshots.has(name)) throw new SnapshotExistsError(`snapshot ${JSON.stringify(name)} already exists`)
      const usage = await diskUsage(this.fsPath(r))
      const now = new Date().toISOString()
      const c: SnapshotRecord = { ...r, kind: 'committed', labels: { ...labels }, created: now, updated: now, usage }
      this.meta.snapshots.delete(key)
      this.meta.snapshots.set(name, c)
      // children name their parent by key: an active snapshot has none, so no reference moves
      await this.persistOr(async () => { this.meta.snapshots.delete(name); this.meta.snapshots.set(key, r) })
      await rm(join(this.dir(r), 'work'), { recursive: true, force: true })
    })
  }

  async remove (key: string): Promise<void> {
    await this.locked(async () => {
      const r = this.get(key)
      const children = this.meta.children(key)
      if (children.length > 0) throw new SnapshotStateError(`cannot remove snapshot ${JSON.stringify(key)}: it has ${children.length} child snapshot(s)`)
      this.meta.snapshots.delete(key)
      await this.persistOr(async () => { this.meta.snapshots.set(key, r) })
      if (this.init.asyncRemove === true) return
      await this.removeDir(r.id).catch(err => { this.log.warn('snapshot directory left for Cleanup', { key, error: (err as Error).message }) })
    })
  }

  private async removeDir (id: number): Promise<void> {
    const dir = join(this.root, 'snapshots', String(id))
    const fs = join(dir, 'fs')
    if ((await mountPointsUnder(join(this.root, 'snapshots'))).has(fs)) {
      if (this.init.remote === undefined) throw new Error(`${fs} is mounted and no remote mounter is configured to unmount it`)
      await this.init.remote.unmount(fs)
    }
    await rm(dir, { recursive: true, force: true })
  }

  async stat (key: string): Promise<SnapshotInfo> { return this.info(key, this.get(key)) }

  private info (name: string, r: SnapshotRecord): SnapshotInfo {
    return { name, parent: r.parent, kind: r.kind, labels: { ...r.labels }, created: new Date(r.created), updated: new Date(r.updated) }
  }

  /** Updates labels: `paths` empty or `labels` replaces them all; `labels.KEY` sets (or, absent, deletes) one. */
  async update (name: string, labels: Record<string, string>, paths: string[]): Promise<SnapshotInfo> {
    checkLabels(labels)
    return await this.locked(async () => {
      const r = this.get(name)
      let next: Record<string, string>
      if (paths.length === 0) { next = { ...labels } } else {
        next = { ...r.labels }
        for (const p of paths) {
          if (p === 'labels') { next = { ...labels }; continue }
          if (!p.startsWith('labels.') || p.length === 7) throw new SnapshotArgumentError(`cannot update field ${JSON.stringify(p)}: only labels are mutable`)
          const k = p.slice(7)
          if (Object.hasOwn(labels, k)) { next[k] = labels[k]! } else { delete next[k] }
        }
      }
      if (r.remote !== undefined) next[LABEL_REMOTE] = r.remote.layerDigest
      checkLabels(next)
      const old = r.labels
      const oldUpdated = r.updated
      r.labels = next
      r.updated = new Date().toISOString()
      await this.persistOr(async () => { r.labels = old; r.updated = oldUpdated })
      return this.info(name, r)
    })
  }

  /** Active: measured now; committed: measured at commit; view: 0 (it writes nothing). */
  async usage (key: string): Promise<Usage> {
    const r = this.get(key)
    if (r.kind === 'active') return await diskUsage(this.fsPath(r))
    return r.usage ?? { size: 0, inodes: 0 }
  }

  list (filters: string[] = []): SnapshotInfo[] {
    const fs = filters.filter(f => f !== '').map(parseFilter)
    const out: SnapshotInfo[] = []
    for (const [k, r] of this.meta.snapshots) {
      if (matches(fs, { name: k, parent: r.parent, kind: r.kind, labels: r.labels })) out.push(this.info(k, r))
    }
    return out
  }

  /** Removes every snapshot directory no snapshot references (crash leftovers, asyncRemove). Returns their ids. */
  async cleanup (): Promise<number[]> {
    return await this.locked(async () => {
      const used = new Set([...this.meta.snapshots.values()].map(r => String(r.id)))
      const removed: number[] = []
      for (const e of await readdir(join(this.root, 'snapshots'))) {
        if (used.has(e)) continue
        const id = Number(e)
        if (!/^\d+$/.test(e)) { await rm(join(this.root, 'snapshots', e), { recursive: true, force: true }); continue }
        await this.removeDir(id)
        removed.push(id)
      }
      return removed
    })
  }

  /** Unmounts every remote snapshot (only for a snapshotter that is being taken off a node for good). */
  async unmountRemote (): Promise<void> {
    const mounted = await mountPointsUnder(join(this.root, 'snapshots'))
    for (const r of this.meta.snapshots.values()) {
      if (r.remote !== undefined && mounted.has(this.fsPath(r))) await this.init.remote?.unmount(this.fsPath(r))
    }
  }
}
