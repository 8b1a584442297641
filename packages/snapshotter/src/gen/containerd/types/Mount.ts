// Original file: proto/containerd/types/mount.proto


/**
 * A mount as the mount(2) syscall takes it: containerd hands these to the runtime.
 */
export interface Mount {
  /**
   * Type of the mount ("bind", "overlay", ...).
   */
  'type'?: (string);
  /**
   * Source of the mount (a host path, or the file system's name).
   */
  'source'?: (string);
  /**
   * Target path in the container (unused for rootfs mounts).
   */
  'target'?: (string);
  /**
   * fstab-style options ("ro", "rbind", "lowerdir=...").
   */
  'options'?: (string)[];
}

/**
 * A mount as the mount(2) syscall takes it: containerd hands these to the runtime.
 */
export interface Mount__Output {
  /**
   * Type of the mount ("bind", "overlay", ...).
   */
  'type': (string);
  /**
   * Source of the mount (a host path, or the file system's name).
   */
  'source': (string);
  /**
   * Target path in the container (unused for rootfs mounts).
   */
  'target': (string);
  /**
   * fstab-style options ("ro", "rbind", "lowerdir=...").
   */
  'options': (string)[];
}
