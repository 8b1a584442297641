/**
 * Mounting a converted image without containerd (`guoce image mount REF DIR`): each metadata layer is
 * mounted file-backed (EROFS, `device=` per blob) under `workDir`, then overlayfs stacks them read-only
 * at `target` (a single layer is bind-mounted). The syscalls are injected (`@guoce/native-mount`), so
 * this package does not load the addon itself.
 *
 * Who owns what: the returned MountedImage owns every mount it made; `unmount()` removes them, top first.
 * On failure part-way, mounts already made are removed before the error is thrown.
 */
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { convertedLayers } from './oci.js'

export interface Mounter {
  mount: (source: string | null, target: string, fstype: string | null, flags?: number, data?: string | null) => Promise<void>
  umount2: (target: string, flags?: number) => Promise<void>
  constants: { MS_RDONLY: number, MS_BIND: number, MNT_DETACH: number }
}

export interface MountImageOptions {
  mounter: Mounter
  /** Where the per-layer mount points go (created; removed again by unmount()). */
  workDir: string
}

export interface MountedImage {
  target: string
  /** Per-layer mount points, bottom layer first. */
  layers: string[]
  unmount: () => Promise<void>
}

/**
 * Mounts one converted layer read-only at `target`: its metadata image file-backed (EROFS), with `device=`
 * each of its blobs in device-table order. The snapshotter's layer mounters and mountImage share it.
 */
export async function mountLayer (layer: { meta: string, blobs: string[] }, target: string, m: Mounter): Promise<void> {
  const data = layer.blobs.map(b => `device=${b}`).join(',')
  await m.mount(layer.meta, target, 'erofs', m.constants.MS_RDONLY, data === '' ? null : data)
}

/** Mounts a converted image (`oci:DIR[:TAG]`) read-only at `target`. */
export async function mountImage (ref: string, target: string, opts: MountImageOptions): Promise<MountedImage> {
  return await mountLayers(await convertedLayers(ref), target, opts)
}

/**
 * Mounts metadata layers (bottom first; `blobs` = the files to pass as `device=`, in device order) read-only
 * at `target`: per-layer mount points are `workDir/layer-<i>`. The lazy mount passes blob files on its FUSE mount.
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
