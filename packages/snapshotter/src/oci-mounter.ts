/**
 * A RemoteLayerMounter over converted images in local OCI layouts (`guoce image convert --target oci:DIR`).
 * A layer is looked up by its digest (`cri.layer-digest`) in the manifest CRI names (`cri.manifest-digest`),
 * then in every manifest of the layouts (a registry copy may re-serialize the manifest), and taken only where
 * the snapshot's target (`containerd.io/snapshot.ref`) is that layer's chain id in its image, as containerd
 * computes it from the config's diff ids: the content mounted is the content containerd's own name stands for.
 * An EROFS metadata layer is mounted file-backed with `device=` its local blobs (not lazily: every blob is a
 * local file); a chunk-blob layer is an empty directory (its bytes are reached through the metadata layers'
 * device tables). Anything else is declined (false), and containerd unpacks it as usual. The lazy mounter
 * (blobs served by FUSE from the swarm) plugs into the same seam.
 */
import { createHash } from 'node:crypto'
import { readFile, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { AbortOptions } from '@guoce/interface'
import { mountLayer, materializeLayers, MEDIA_TYPE_EROFS_META, MEDIA_TYPE_CHUNK_BLOB, ANNOTATION_BLOBS, ANNOTATION_FORMAT, type Manifest, type Mounter } from '@guoce/image'
import type { RemoteLayer, RemoteLayerMounter } from './remote.js'
import { MEDIA_TYPE_PREFETCH } from '@guoce/lazy-mount'

export interface OciLayoutMounterInit {
  /** Directories of OCI image layouts holding converted images. */
  layouts: string[]
  mounter: Mounter
}

const DIGEST = /^sha256:([0-9a-f]{64})$/
/** Largest index or manifest read from a layout. */
const MAX_JSON_BYTES = 4 << 20

function blob (dir: string, digest: string): string {
  const m = DIGEST.exec(digest)
  if (m === null) throw new Error(`unsupported digest ${JSON.stringify(digest)}`)
  return join(dir, 'blobs', 'sha256', m[1]!)
}

async function readJson<T> (path: string): Promise<T | undefined> {
  try {
    const b = await readFile(path)
    if (b.length > MAX_JSON_BYTES) return undefined
    return JSON.parse(b.toString('utf8')) as T
  } catch { return undefined }
}

/** containerd's chain ids (identity.ChainID) of a list of diff ids: sha256 of "PARENT_CHAIN DIFF_ID". */
export function chainIds (diffIds: string[]): string[] {
  const out: string[] = []
  for (const d of diffIds) {
    const prev = out.at(-1)
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`)
  }
  return out
}

export function ociLayoutMounter (init: OciLayoutMounterInit): RemoteLayerMounter {
  const find = async (layer: RemoteLayer): Promise<{ dir: string, manifest: Manifest, index: number } | undefined> => {
    if (!DIGEST.test(layer.layerDigest)) return undefined
    for (const dir of init.layouts) {
      const index = await readJson<{ manifests?: Array<{ digest: string }> }>(join(dir, 'index.json'))
      // the manifest CRI names first; then every manifest of the layout (a registry copy may re-serialize the manifest)
      const digests = [...new Set([layer.manifestDigest, ...(index?.manifests ?? []).map(d => d.digest)])].filter(d => DIGEST.test(d))
      for (const d of digests) {
        const manifest = await readJson<Manifest>(blob(dir, d))
        if (manifest?.annotations?.[ANNOTATION_FORMAT] === undefined || !DIGEST.test(manifest.config?.digest ?? '')) continue
        const config = await readJson<{ rootfs?: { diff_ids?: string[] } }>(blob(dir, manifest.config.digest))
        const chain = chainIds(config?.rootfs?.diff_ids ?? [])
        // the layer at the place in its image that containerd's chain id names: the label's digest alone could
        // come from an image's own annotations (outside CRI) and name another image's layer
        // (containerd leaves a prefetch list out of the image's layers, and so does this)
        const layers = manifest.layers.filter(l => l.mediaType !== MEDIA_TYPE_PREFETCH)
        const index = layers.findIndex((l, i) => l.digest === layer.layerDigest && chain[i] === layer.ref)
        if (index !== -1 && chain.length === layers.length) return { dir, manifest: { ...manifest, layers }, index }
      }
    }
    return undefined
  }
  /** where the blob views of the layer mounted at `dir` go */
  const viewsOf = (dir: string): string => join(dirname(dir), `${basename(dir)}.views`)
  return {
    mount: async (layer: RemoteLayer, dir: string, opts: AbortOptions): Promise<boolean> => {
      opts.signal?.throwIfAborted()
      const found = await find(layer)
      if (found === undefined) return false
      const desc = found.manifest.layers[found.index]!
      if (desc.mediaType === MEDIA_TYPE_CHUNK_BLOB) return true
      if (desc.mediaType !== MEDIA_TYPE_EROFS_META) return false
      const blobs = JSON.parse(desc.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[]
      const converted = { meta: blob(found.dir, desc.digest), blobs: blobs.map(b => blob(found.dir, b)) }
      // the kernel reads blob views: a v2 blob (compressed chunks) is expanded, verified, beside the mount point
      const views = viewsOf(dir)
      try {
        const [devices] = await materializeLayers([converted], views, opts.signal !== undefined ? { signal: opts.signal } : {})
        await mountLayer({ meta: converted.meta, blobs: devices! }, dir, init.mounter)
      } catch (err) {
        await rm(views, { recursive: true, force: true })
        throw err
      }
      return true
    },
    unmount: async (dir: string): Promise<void> => {
      await init.mounter.umount2(dir, init.mounter.constants.MNT_DETACH)
      await rm(viewsOf(dir), { recursive: true, force: true })
    }
  }
}
