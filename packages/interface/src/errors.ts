/**
 * Every error that crosses a package boundary. Compare by `name`; `code` is stable for
 * machine use (CLI `--json`, HTTP bodies, protocol failure messages).
 */

export class GuoceError extends Error {
  static name = 'GuoceError'
  code: string = 'ERR_GUOCE'
  constructor (message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = (this.constructor as { name: string }).name
  }
}

/** An error class with a fixed name and code, for packages to declare their own errors. */
export function defineError (name: string, code: string): new (message: string, options?: ErrorOptions) => GuoceError {
  const cls = class extends GuoceError {
    static override name = name
    override code = code
  }
  Object.defineProperty(cls, 'name', { value: name })
  return cls
}

/** A URL that cannot be fetched (bad syntax, unsupported scheme). */
export const InvalidUrlError = defineError('InvalidUrlError', 'ERR_INVALID_URL')
/** The origin answered with an HTTP status that is not success. */
export class OriginStatusError extends GuoceError {
  static override name = 'OriginStatusError'
  override code = 'ERR_ORIGIN_STATUS'
  constructor (readonly status: number, message: string) { super(message) }
}
/** The origin did not answer in time. */
export const OriginTimeoutError = defineError('OriginTimeoutError', 'ERR_ORIGIN_TIMEOUT')
/** The origin could not be reached (refused, reset, DNS). */
export const OriginUnreachableError = defineError('OriginUnreachableError', 'ERR_ORIGIN_UNREACHABLE')
/** The origin closed the body before Content-Length bytes arrived (or sent more). */
export const ContentLengthMismatchError = defineError('ContentLengthMismatchError', 'ERR_CONTENT_LENGTH')
/**
 * The origin's content changed under a URL task: its validator (ETag or Last-Modified) is not the one
 * the task was started with (HTTP 412 to If-Match / If-Unmodified-Since, a full 200 to an If-Range
 * request, or another validator on a response). The partial task is dropped; a new get starts over.
 */
export const ContentChangedError = defineError('ContentChangedError', 'ERR_CONTENT_CHANGED')
/** The local API refused the request (a Host header that is not a loopback name, a removed route). */
export const ForbiddenError = defineError('ForbiddenError', 'ERR_FORBIDDEN')
/** A piece's bytes do not hash to the digest the seed peer announced. */
export const PieceDigestMismatchError = defineError('PieceDigestMismatchError', 'ERR_PIECE_DIGEST')
/** The whole content does not hash to the expected `--digest`. */
export const DigestMismatchError = defineError('DigestMismatchError', 'ERR_DIGEST_MISMATCH')
/** A digest string that is not `sha256:<64 hex>`. */
export const InvalidDigestError = defineError('InvalidDigestError', 'ERR_INVALID_DIGEST')
/** A peer sent something the protocol does not allow. */
export const ProtocolError = defineError('ProtocolError', 'ERR_PROTOCOL')
/** A parent did not deliver in time. */
export const ParentTimeoutError = defineError('ParentTimeoutError', 'ERR_PARENT_TIMEOUT')
/** A task or piece that is not here. */
export const NotFoundError = defineError('NotFoundError', 'ERR_NOT_FOUND')
/** The local disk is full (ENOSPC) or over quota. */
export const NoSpaceError = defineError('NoSpaceError', 'ERR_NO_SPACE')
/** The download failed for a reason the source reported. */
export const TaskFailedError = defineError('TaskFailedError', 'ERR_TASK_FAILED')
/** The operation was aborted. */
export const AbortError = defineError('AbortError', 'ERR_ABORTED')
/** A read waited longer than its timeout for a piece (or the task's layout) that did not arrive. */
export const ReadTimeoutError = defineError('ReadTimeoutError', 'ERR_READ_TIMEOUT')
/** A read outside the content (offset beyond its end). */
export const RangeNotSatisfiableError = defineError('RangeNotSatisfiableError', 'ERR_RANGE')
/** Bad configuration or option. */
export const InvalidParametersError = defineError('InvalidParametersError', 'ERR_INVALID_PARAMETERS')

/** Serializable form used on the wire and in API bodies. */
export interface ErrorInfo { name: string, code: string, message: string, status?: number }

export function toErrorInfo (err: unknown): ErrorInfo {
  if (err instanceof Error) {
    const e = err as Error & { code?: unknown, status?: unknown }
    const info: ErrorInfo = { name: e.name, code: typeof e.code === 'string' ? e.code : 'ERR_UNKNOWN', message: e.message }
    if (typeof e.status === 'number') info.status = e.status
    return info
  }
  return { name: 'Error', code: 'ERR_UNKNOWN', message: String(err) }
}

const byName: Record<string, new (message: string) => GuoceError> = {
  InvalidUrlError, OriginTimeoutError, OriginUnreachableError, ContentLengthMismatchError, PieceDigestMismatchError, DigestMismatchError,
  InvalidDigestError, ProtocolError, ParentTimeoutError, NotFoundError, NoSpaceError, TaskFailedError, AbortError,
  InvalidParametersError, ContentChangedError, ForbiddenError, ReadTimeoutError, RangeNotSatisfiableError
}

/** Rebuild a typed error from its wire form. */
export function fromErrorInfo (info: ErrorInfo): GuoceError {
  if (info.name === OriginStatusError.name) return new OriginStatusError(info.status ?? 0, info.message)
  const Cls = byName[info.name]
  const err = Cls != null ? new Cls(info.message) : new TaskFailedError(info.message)
  return err
}
