/**
 * Errors of the snapshotter, each one gRPC status (the table in grpcStatusOf, doc/ERRORS.md): containerd turns
 * these codes back into its errdefs (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument), which its
 * unpacker and garbage collector act on.
 */
import { status } from '@grpc/grpc-js'
import { defineError } from '@guoce/interface'

/** No snapshot of that key or name (gRPC NOT_FOUND). */
export const SnapshotNotFoundError = defineError('SnapshotNotFoundError', 'ERR_SNAPSHOT_NOT_FOUND')
/** A snapshot of that key or name exists already, or a remote layer was mounted under its target (gRPC ALREADY_EXISTS). */
export const SnapshotExistsError = defineError('SnapshotExistsError', 'ERR_SNAPSHOT_EXISTS')
/** The snapshot is not in the state the call needs: committing a committed one, removing one with children (gRPC FAILED_PRECONDITION). */
export const SnapshotStateError = defineError('SnapshotStateError', 'ERR_SNAPSHOT_STATE')
/** A malformed request: empty key, parent not committed, label too long, unknown field path or filter (gRPC INVALID_ARGUMENT). */
export const SnapshotArgumentError = defineError('SnapshotArgumentError', 'ERR_SNAPSHOT_ARGUMENT')

const CODES: Record<string, status> = {
  SnapshotNotFoundError: status.NOT_FOUND,
  SnapshotExistsError: status.ALREADY_EXISTS,
  SnapshotStateError: status.FAILED_PRECONDITION,
  SnapshotArgumentError: status.INVALID_ARGUMENT
}

/** The gRPC status of an error: the table above, else INTERNAL (disk errors, a failed mount). */
export function grpcStatusOf (err: unknown): status {
  return CODES[(err as Error | undefined)?.name ?? ''] ?? status.INTERNAL
}
