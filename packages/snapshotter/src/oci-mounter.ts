/**
 * A RemoteLayerMounter over converted images in local OCI layouts (`guoce image convert --target oci:DIR`):
 * a layer CRI prepares is looked up by its digest in the manifest CRI names (`cri.manifest-digest`, else in any
 * manifest of the layouts); an EROFS metadata layer is mounted file-backed with `device=` its local blobs
 * (not lazily: every blob is a local file); a chunk-blob layer is an empty directory (its bytes are reached
 * through the metadata layers' device tables). Layers of other images are declined (false), and containerd
 * unpacks them as usual. The lazy mounter (blobs served by FUSE from the swarm) plugs into the same seam.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbortOptions } from '@guoce/interface'
import { mountLayer, MEDIA_TYPE_EROFS_META, MEDIA_TYPE_CHUNK_BLOB, ANNOTATION_BLOBS, ANNOTATION_FORMAT, type Manifest, type Mounter } from '@guoce/image'
import type { RemoteLayer, RemoteLayerMounter } from './remote.js'

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

export function ociLayoutMounter (init: OciLayoutMounterInit): RemoteLayerMounter {
  const find = async (layer: RemoteLayer): Promise<{ dir: string, manifest: Manifest } | undefined> => {
    if (!DIGEST.test(layer.layerDigest)) return undefined
    for (const dir of init.layouts) {
      const index = await readJson<{ manifests?: Array<{ digest: string }> }>(join(dir, 'index.json'))
      // the manifest CRI names first; then every manifest of the layout (a registry copy may re-serialize the manifest)
      const digests = [...new Set([layer.manifestDigest, ...(index?.manifests ?? []).map(d => d.digest)])].filter(d => DIGEST.test(d))
      for (const d of digests) {
        const manifest = await readJson<Manifest>(blob(dir, d))
        if (manifest?.annotations?.[ANNOTATION_FORMAT] === undefined) continue
        if (manifest.layers.some(l => l.digest === layer.layerDigest)) return { dir, manifest }
      }
    }
    return undefined
  }
  return {
    mount: async (layer: RemoteLayer, dir: string, opts: AbortOptions): Promise<boolean> => {
      opts.signal?.throwIfAborted()
      const found = await find(layer)
      if (found === undefined) return false
      const desc = found.manifest.layers.find(l => l.digest === layer.layerDigest)!
      if (desc.mediaType === MEDIA_TYPE_CHUNK_BLOB) return true
      if (desc.mediaType !== MEDIA_TYPE_EROFS_META) return false
      const blobs = JSON.parse(desc.annotations?.[ANNOTATION_BLOBS] ?? '[]') as string[]
      await mountLayer({ meta: blob(found.dir, desc.digest), blobs: blobs.map(b => blob(found.dir, b)) }, dir, init.mounter)
      return true
    },
    unmount: async (dir: string): Promise<void> => {
      await init.mounter.umount2(dir, init.mounter.constants.MNT_DETACH)
    }
  }
}
