/**
 * The containerd snapshots service definition, loaded at run time with @grpc/proto-loader from the .proto
 * files shipped in this package (`proto/`); its TypeScript types are generated from the same files
 * (`npm run gen -w @guoce/snapshotter` writes src/gen/; test/proto.spec.ts checks they are current).
 */
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import type { ProtoGrpcType } from './gen/snapshots.js'

/** The package root: the nearest directory above this module that holds `proto/` (src/ or dist/src/). */
function packageRoot (): string {
  let dir = import.meta.dirname
  while (!existsSync(join(dir, 'proto', 'containerd'))) {
    const up = dirname(dir)
    if (up === dir) throw new Error(`@guoce/snapshotter: proto/ not found above ${import.meta.dirname}`)
    dir = up
  }
  return dir
}

export const PROTO_DIR = join(packageRoot(), 'proto')
export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto'

/** Options matching the generator's (`--longs=Number --enums=String --defaults --oneofs`). */
export const LOADER_OPTIONS = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] }

let cached: ProtoGrpcType | undefined
export function snapshotsProto (): ProtoGrpcType {
  cached ??= grpc.loadPackageDefinition(loadSync(SNAPSHOTS_PROTO, LOADER_OPTIONS)) as unknown as ProtoGrpcType
  return cached
}
