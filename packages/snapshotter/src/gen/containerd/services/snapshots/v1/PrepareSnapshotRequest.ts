// Original file: proto/containerd/services/snapshots/v1/snapshots.proto


export interface PrepareSnapshotRequest {
  'snapshotter'?: (string);
  'key'?: (string);
  'parent'?: (string);
  /**
   * The combined size of a key/value pair cannot exceed 4096 bytes.
   */
  'labels'?: ({[key: string]: string});
}

export interface PrepareSnapshotRequest__Output {
  'snapshotter': (string);
  'key': (string);
  'parent': (string);
  /**
   * The combined size of a key/value pair cannot exceed 4096 bytes.
   */
  'labels': ({[key: string]: string});
}
