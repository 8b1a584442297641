/**
 * The snapshotter's metadata: every snapshot's key, kind, parent, labels, times, directory id and usage,
 * in one JSON file (`<root>/metadata.json`) rewritten whole on every change: written to a temp file,
 * fsynced, renamed over the old one, and the directory fsynced. A snapshotter killed at any moment
 * restarts with the last change that returned to its caller, or the one before; never a torn file.
 *
 * Who owns what: MetaStore owns the in-memory map and the file; the Snapshotter changes the map only
 * through `commit()` (which persists) while it holds its lock.
 */
import { open, readFile, rename, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { RemoteLayer } from './remote.js'

export type SnapshotKind = 'active' | 'view' | 'committed'

export interface SnapshotRecord {
  /** Directory id: `<root>/snapshots/<id>/`. Kept when an active snapshot is committed. */
  id: number
  kind: SnapshotKind
  /** Parent's key ('' for none); always a committed snapshot. */
  parent: string
  labels: Record<string, string>
  created: string
  updated: string
  /** Disk usage measured at commit (committed snapshots). */
  usage?: { size: number, inodes: number }
  /** Set when a RemoteLayerMounter mounted this snapshot's fs (re-mounted after a restart if gone). */
  remote?: RemoteLayer
}

interface MetaFile { version: 1, nextId: number, snapshots: Array<[string, SnapshotRecord]> }

export class MetaStore {
  readonly snapshots = new Map<string, SnapshotRecord>()
  nextId = 1
  private constructor (readonly path: string) {}

  static async open (root: string): Promise<MetaStore> {
    const m = new MetaStore(join(root, 'metadata.json'))
    let text: string | undefined
    try { text = await readFile(m.path, 'utf8') } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err }
    if (text !== undefined) {
      let f: MetaFile
      try { f = JSON.parse(text) as MetaFile } catch (err) { throw new Error(`${m.path}: not valid JSON (${(err as Error).message}); the file is left as it is`, { cause: err }) }
      if (f?.version !== 1 || !Array.isArray(f.snapshots) || !Number.isSafeInteger(f.nextId)) throw new Error(`${m.path}: not a snapshotter metadata file of version 1`)
      for (const [k, r] of f.snapshots) m.snapshots.set(k, r)
      m.nextId = f.nextId
    }
    await rm(`${m.path}.tmp`, { force: true })
    return m
  }

  /** Persists the map as it is now (temp file, fsync, rename, fsync of the directory). */
  async commit (): Promise<void> {
    const f: MetaFile = { version: 1, nextId: this.nextId, snapshots: [...this.snapshots] }
    const tmp = `${this.path}.tmp`
    const fh = await open(tmp, 'w', 0o600)
    try {
      await fh.writeFile(JSON.stringify(f))
      await fh.sync()
    } finally { await fh.close() }
    await rename(tmp, this.path)
    const d = await open(dirname(this.path), 'r')
    try { await d.sync() } finally { await d.close() }
  }

  children (key: string): string[] {
    const out: string[] = []
    for (const [k, r] of this.snapshots) if (r.parent === key) out.push(k)
    return out
  }

  /** The snapshot `parent` and its ancestors down to the base layer, nearest first. */
  ancestors (parent: string): SnapshotRecord[] {
    const out: SnapshotRecord[] = []
    let p = parent
    while (p !== '') {
      const r = this.snapshots.get(p)
      if (r === undefined) throw new Error(`metadata: parent ${JSON.stringify(p)} is missing`)
      out.push(r)
      p = r.parent
    }
    return out
  }
}
