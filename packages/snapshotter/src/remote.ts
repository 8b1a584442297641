/**
 * The seam for remote (lazy) layers. When containerd prepares a layer with the labels CRI sets
 * (`containerd.io/snapshot.ref` plus `containerd.io/snapshot/cri.layer-digest`, `cri.image-ref`,
 * `cri.manifest-digest`), the snapshotter asks its RemoteLayerMounter to mount that layer into an empty
 * directory. If the mounter did, the directory becomes a committed snapshot named by the ref and Prepare
 * answers ALREADY_EXISTS: containerd's unpacker then skips the layer, so it downloads nothing. If it did
 * not (not a Guoce layer, or no such mounter), Prepare goes on as an ordinary overlayfs snapshotter.
 */
import type { AbortOptions } from '@guoce/interface'
import { LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_TARGET_REF } from './constants.js'

/** What containerd told us about the layer it prepares. */
export interface RemoteLayer {
  /** The committed snapshot's name (the layer's chain id). */
  ref: string
  /** Image reference as the user named it, e.g. `127.0.0.1:5000/app:v1`. */
  imageRef: string
  /** The layer's descriptor digest in the manifest. */
  layerDigest: string
  /** The manifest's digest (empty when CRI did not send it). */
  manifestDigest: string
  /** Every label of the Prepare request. */
  labels: Record<string, string>
}

export interface RemoteLayerMounter {
  /**
   * Mounts `layer` read-only at `dir` (an empty directory the snapshotter made) and resolves true, or
   * resolves false, leaving `dir` empty and unmounted, when the layer is not one this mounter serves.
   * Rejects on failure; the snapshotter then fails the Prepare (containerd retries, or the pull fails).
   */
  mount: (layer: RemoteLayer, dir: string, opts: AbortOptions) => Promise<boolean>
  /**
   * True when a layer mount this mounter made does not survive its process (it reads through a server of that
   * process): at open, the snapshotter detaches and mounts again every remote layer it finds still mounted.
   */
  remountOnOpen?: boolean
  /** Undoes a mount made by mount() (the snapshot is removed, or the snapshotter stops with `unmountOnStop`). */
  unmount: (dir: string) => Promise<void>
}

/** The remote layer a Prepare names, or undefined when its labels do not name one. */
export function remoteLayerOf (labels: Record<string, string>): RemoteLayer | undefined {
  const ref = labels[LABEL_TARGET_REF]
  const layerDigest = labels[LABEL_CRI_LAYER_DIGEST]
  const imageRef = labels[LABEL_CRI_IMAGE_REF]
  if (ref == null || ref === '' || layerDigest == null || layerDigest === '' || imageRef == null || imageRef === '') return undefined
  return { ref, imageRef, layerDigest, manifestDigest: labels[LABEL_CRI_MANIFEST_DIGEST] ?? '', labels: { ...labels } }
}
