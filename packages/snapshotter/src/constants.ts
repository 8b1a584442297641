/** Limits and names of the snapshotter (doc/LIMITS.md). */

/**
 * Longest label key + value, in bytes (containerd's own rule for snapshot labels).
 * @default 4096
 */
export const MAX_LABEL_BYTES = 4096
/**
 * Most labels on one snapshot; more is INVALID_ARGUMENT (containerd sets a handful).
 * @default 256
 */
export const MAX_LABELS = 256
/**
 * Longest snapshot key or name, in bytes.
 * @default 4096
 */
export const MAX_KEY_BYTES = 4096
/**
 * Most snapshots the metadata file holds; a Prepare or View beyond it is FAILED_PRECONDITION.
 * @default 100000
 */
export const MAX_SNAPSHOTS = 100_000
/**
 * Longest a remote layer mount may take before Prepare gives up on it and fails (INTERNAL).
 * @default 120000
 */
export const REMOTE_MOUNT_TIMEOUT_MS = 120_000
/**
 * Largest image config the registry mounter fetches (it reads the diff ids to check chain ids).
 * @default 4 MiB
 */
export const MAX_CONFIG_BYTES = 4 << 20
/**
 * Largest EROFS metadata layer the registry mounter fetches (the metadata of a large image is tens of MB).
 * @default 1 GiB
 */
export const MAX_LAYER_META_BYTES = 1 << 30

/**
 * Longest the registry mounter waits for the daemon to set up a lazy layer's blob task ahead of the first read
 * (it does not wait on it: a failure only means the first read sets it up).
 * @default 30000
 */
export const PREPARE_TIMEOUT_MS = 30_000

/**
 * Largest prefetch layer (the image's list of chunks to fetch ahead) the registry mounter fetches.
 * @default 16 MiB
 */
export const MAX_PREFETCH_TRACE_BYTES = 16 << 20
/**
 * Chunks of an image's prefetch list the registry mounter fetches at once (the node's daemon joins those that
 * fall in one piece); a container's reads of other chunks go on beside them. A cold chunk costs tens of ms of
 * round trips (daemon, scheduler, seed, registry) for a few KiB to 1 MiB: at 8 the prefetch of bench/containerd's
 * 71 chunks took 0.87 s at 1 Gbit/s (9 MB/s); at 32 the container's first output came 0.1-0.2 s sooner (64: no better).
 * @default 32
 */
export const PREFETCH_CONCURRENCY = 32

/** The label containerd's unpacker sets on Prepare: the name (chain id) the layer's snapshot is committed as. */
export const LABEL_TARGET_REF = 'containerd.io/snapshot.ref'
/** Labels CRI adds to a layer's Prepare (containerd 1.6, `disable_snapshot_annotations = false`). */
export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref'
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest'
export const LABEL_CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest'
/** Set by us on a snapshot that a RemoteLayerMounter mounted (value: the layer digest). */
export const LABEL_REMOTE = 'containerd.io/snapshot/guoce.remote'
