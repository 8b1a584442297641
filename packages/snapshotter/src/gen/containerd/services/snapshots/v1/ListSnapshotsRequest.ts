// Original file: proto/containerd/services/snapshots/v1/snapshots.proto


export interface ListSnapshotsRequest {
  'snapshotter'?: (string);
  /**
   * containerd filter expressions; a snapshot is listed when it matches any of them (all when empty).
   */
  'filters'?: (string)[];
}

export interface ListSnapshotsRequest__Output {
  'snapshotter': (string);
  /**
   * containerd filter expressions; a snapshot is listed when it matches any of them (all when empty).
   */
  'filters': (string)[];
}
