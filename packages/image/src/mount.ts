/**
 * Mounting a converted image without containerd (`guoce image mount REF DIR` of a local image): each metadata layer
 * is mounted file-backed (EROFS, `device=` per blob) under `workDir`, then overlayfs stacks them read-only at
 * `target` (a single layer is bind-mounted). The syscalls are injected (`@guoce/native-mount`), so this package
 * does not load the addon itself.
 *
 * The kernel reads a blob's uncompressed view. A v1 blob is its view and is mounted as is; a v2 blob (compressed
 * chunks) is first expanded, verified chunk by chunk, into `workDir/views/<digest>` (materializeEntries), once per
 * blob for every layer that refers to it. The lazy mount serves the same view from a FUSE file instead.
 *
 * Who owns what: the returned MountedImage owns every mount it made and `workDir`; `unmount()` removes them, top
 * first. On failure part-way, mounts already made are removed (and workDir) before the error is thrown.
 */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { loadChunkTable, materializeEntries, type ChunkExtent } from './chunks.js'
import { BLOCK_SIZE } from './constants.js'
import { CorruptImageError } from './errors.js'
import { convertedLayers } from './oci.js'

export interface Mounter {
  mount: (source: string | null, target: string, fstype: string | null, flags?: number, data?: string | null) => Promise<void>
  umount2: (target: string, flags?: number) => Promise<void>
  constants: { MS_RDONLY: number, MS_BIND: number, MNT_DETACH: number }
}

export interface MountImageOptions {
  mounter: Mounter
  /** Where the per-layer mount points and materialised views go (created; removed again by unmount()). */
  workDir: string
  signal?: AbortSignal
}

export interface MountedImage {
  target: string
  /** Per-layer mount points, bottom layer first. */
  layers: string[]
  unmount: () => Promise<void>
}

/** Whether this kernel's EROFS takes `directio` (undefined: not tried yet; set by the first mount with devices). */
let directIo: boolean | undefined

/**
 * Mounts one converted layer read-only at `target`: its metadata image file-backed (EROFS), with `device=`
 * each of its blobs in device-table order. The snapshotter's layer mounters and mountImage share it.
 *
 * With `directio` where the kernel has it: EROFS then reads its devices with direct I/O, exactly the blocks a
 * file read needs. Without it the device files' page cache reads ahead past them, into the next files of the
 * tar: on a lazy blob file (FUSE) that fetched chunks nobody read (a prefetch test's workload fetched one more
 * chunk than it listed), and every page was cached twice, in the device file and in EROFS. A kernel without
 * the option refuses the mount with EINVAL: then it is mounted without, and later mounts do not try again.
 */
export async function mountLayer (layer: { meta: string, blobs: string[] }, target: string, m: Mounter): Promise<void> {
  const data = layer.blobs.map(b => `device=${b}`).join(',')
  if (data === '') { await m.mount(layer.meta, target, 'erofs', m.constants.MS_RDONLY, null); return }
  if (directIo !== false) {
    try {
      await m.mount(layer.meta, target, 'erofs', m.constants.MS_RDONLY, `${data},directio`)
      directIo = true
      return
    } catch (err) {
      if (directIo === true || (err as { code?: string }).code !== 'EINVAL') throw err
    }
    await m.mount(layer.meta, target, 'erofs', m.constants.MS_RDONLY, data)
    directIo = false // the same mount without the option worked: the kernel has none
    return
  }
  await m.mount(layer.meta, target, 'erofs', m.constants.MS_RDONLY, data)
}


interface BlobView { path: string, viewSize: number, storedSize: number, entries: Map<number, ChunkExtent> }

/**
 * The files to pass as `device=` for each layer: v1 blobs as they are, v2 blobs expanded into their views
 * under `dir` (each blob once, with the chunks of every layer that refers to it).
 */
export async function materializeLayers (layers: Array<{ meta: string, blobs: string[] }>, dir: string, opts: { signal?: AbortSignal } = {}): Promise<string[][]> {
  const views = new Map<string, BlobView>()
  const devices: Array<Array<{ blob: string, key: string | undefined }>> = []
  for (const l of layers) {
    const { reader, table } = await loadChunkTable(l.meta)
    const devs = reader.sb.devices
    if (devs.length !== l.blobs.length) throw new CorruptImageError(`${l.meta}: device table has ${devs.length} blobs, ${l.blobs.length} given`)
    if (table.version === 1) { devices.push(l.blobs.map(b => ({ blob: b, key: undefined }))); continue }
    const row: Array<{ blob: string, key: string }> = []
    for (const [i, d] of devs.entries()) {
      const key = `${d.tag}:${l.blobs[i]!}`
      let v = views.get(key)
      if (v === undefined) {
        v = { path: join(dir, `view-${views.size}`), viewSize: d.blocks * BLOCK_SIZE, storedSize: table.storedSizes![i]!, entries: new Map() }
        views.set(key, v)
      }
      if (v.viewSize !== d.blocks * BLOCK_SIZE || v.storedSize !== table.storedSizes![i]) throw new CorruptImageError(`blob ${d.tag}: layers disagree on its size`)
      for (const e of table.entries) {
        if (e.device !== i + 1) continue
        const had = v.entries.get(e.blkaddr)
        if (had === undefined) v.entries.set(e.blkaddr, e)
        else if (!had.digest.equals(e.digest) || had.storedOffset !== e.storedOffset || had.storedLength !== e.storedLength || had.length !== e.length) {
          throw new CorruptImageError(`blob ${d.tag} block ${e.blkaddr}: layers disagree on the chunk stored there`)
        }
      }
      row.push({ blob: l.blobs[i]!, key })
    }
    devices.push(row)
  }
  if (views.size > 0) await mkdir(dir, { recursive: true })
  for (const [key, v] of views) {
    // entries from several layers: re-check that their views do not overlap
    const sorted = [...v.entries.values()].sort((a, b) => a.blkaddr - b.blkaddr)
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i - 1]!.blkaddr + Math.ceil(sorted[i - 1]!.length / BLOCK_SIZE) > sorted[i]!.blkaddr) throw new CorruptImageError(`blob ${key.split(':')[0]}: chunks of different layers overlap at block ${sorted[i]!.blkaddr}`)
    }
    const blob = key.slice(key.indexOf(':') + 1)
    await materializeEntries(sorted, v.viewSize, v.storedSize, blob, v.path, opts)
  }
  return devices.map(row => row.map(d => d.key === undefined ? d.blob : views.get(d.key)!.path))
}

/** Mounts a converted image (`oci:DIR[:TAG]`, v1 or v2) read-only at `target`. */
export async function mountImage (ref: string, target: string, opts: MountImageOptions): Promise<MountedImage> {
  const layers = await convertedLayers(ref)
  let devices: string[][]
  try {
    devices = await materializeLayers(layers, join(opts.workDir, 'views'), opts.signal !== undefined ? { signal: opts.signal } : {})
  } catch (err) {
    await rm(opts.workDir, { recursive: true, force: true })
    throw err
  }
  return await mountLayers(layers.map((l, i) => ({ meta: l.meta, blobs: devices[i]! })), target, opts)
}

/**
 * Mounts metadata layers (bottom first; `blobs` = the files to pass as `device=`, in device order: blob
 * *views*, so v2 blobs materialised first, see materializeLayers) read-only at `target`: per-layer mount
 * points are `workDir/layer-<i>`. The lazy mount passes the views its FUSE mount serves.
 */
export async function mountLayers (layers: Array<{ meta: string, blobs: string[] }>, target: string, opts: MountImageOptions): Promise<MountedImage> {
  const { mounter: m, workDir } = opts
  const done: string[] = []
  const unmountAll = async (): Promise<void> => {
    let first: unknown
    for (const p of [...done].reverse()) {
      try { await m.umount2(p, m.constants.MNT_DETACH) } catch (err) { first ??= err }
    }
    if (first !== undefined) throw first
    done.length = 0
    await rm(workDir, { recursive: true, force: true })
  }
  try {
    await mkdir(workDir, { recursive: true })
    const points: string[] = []
    for (const [i, l] of layers.entries()) {
      const p = join(workDir, `layer-${i}`)
      await mkdir(p)
      await mountLayer(l, p, m)
      done.push(p)
      points.push(p)
    }
    if (points.length === 1) {
      await m.mount(points[0]!, target, null, m.constants.MS_BIND, null)
    } else {
      await m.mount('overlay', target, 'overlay', m.constants.MS_RDONLY, `lowerdir=${[...points].reverse().join(':')}`)
    }
    done.push(target)
    return { target, layers: points, unmount: unmountAll }
  } catch (err) {
    await unmountAll().catch(() => {})
    throw err
  }
}
